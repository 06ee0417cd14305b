"""Data loading that resumes exactly: the sampler knows the epoch and position from the Trainer's own progress.

trainctl rebuilds the user's map-style loaders with its own distributed samplers:
- train: `ResumableDistributedSampler` reads, when its iterator is created, the epoch being run and how many
  batches of it are already done (restored from the checkpoint), so it shuffles with that epoch's seed and
  skips the finished part. Lightning calls `set_epoch` after creating the first iterator of a resumed run,
  which is why the epoch is read lazily instead (../shared/notes/resume.md, Lightning #21938).
- val/test: `UnpaddedDistributedSampler` gives each sample to exactly one rank (no padding duplicates), so
  metrics synced across ranks cover the whole set once.
Each rebuilt loader gets its own torch.Generator, so creating an iterator never draws from the global RNG, and
starts its workers from a forkserver, never by forking the rank beside its threads (worker/loader_workers.py).
Loaders trainctl cannot rebuild (iterable datasets, custom batch samplers) are left to Lightning and resume at
the epoch boundary; the run records that with a warning tag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from trainctl.worker.loader_workers import context_for

log = logging.getLogger("trainctl.data")


class ResumableDistributedSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool,
                 batch_size: int, progress: Callable[[], tuple[int, int]]) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.batch_size = batch_size
        self.progress = progress  # () -> (epoch about to run, batches of it already done)

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch is read from the Trainer when the iterator is created."""

    def __iter__(self) -> Iterator[int]:
        epoch, done_batches = self.progress()
        self.epoch = epoch
        indices = list(super().__iter__())
        skip = done_batches * self.batch_size  # a finished epoch (skip >= len) starts the next one whole
        return iter(indices[skip:] if 0 < skip < len(indices) else indices)


class UnpaddedDistributedSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


def _rebuildable(loader: Any) -> bool:
    return (
        isinstance(loader, DataLoader)
        and not isinstance(loader.dataset, torch.utils.data.IterableDataset)
        and loader.batch_size is not None
        and isinstance(loader.sampler, (RandomSampler, SequentialSampler))
        and hasattr(loader.dataset, "__len__")
    )


def train_progress(trainer: Any) -> Callable[[], tuple[int, int]]:
    def read() -> tuple[int, int]:
        fit_loop = trainer.fit_loop
        epoch = fit_loop.epoch_progress.current.processed
        # Read when the iterator is created, which (with loader workers) precedes Lightning's own loop reset
        # and its count of the epoch's batches: `processed` is the restored position at both moments.
        return epoch, fit_loop.epoch_loop.batch_progress.current.processed

    return read


class ResumableData:
    """Wraps the `*_dataloader` methods of the user's DataModule (or LightningModule) on this instance only."""

    def __init__(self, ns: Any, trainer: Any, seed: int, rank: int, world_size: int) -> None:
        self.ns, self.trainer, self.seed, self.rank, self.world = ns, trainer, seed, rank, world_size
        self.not_resumable: list[str] = []

    def install(self, source: Any) -> None:
        for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
            original = getattr(source, name, None)
            if original is not None and callable(original):
                setattr(source, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Callable[[], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            loaders = original()
            if isinstance(loaders, (list, tuple)):
                return type(loaders)(self._rebuild(name, dl) for dl in loaders)
            if isinstance(loaders, dict):
                return {k: self._rebuild(name, dl) for k, dl in loaders.items()}
            return self._rebuild(name, loaders)

        return wrapped

    def _rebuild(self, name: str, loader: Any) -> Any:
        if not _rebuildable(loader):
            self.not_resumable.append(f"{name}: {type(loader).__name__}")
            return loader
        from importlib import import_module

        update = import_module(f"{self.ns.pl.__name__}.utilities.data")._update_dataloader
        stage = import_module(f"{self.ns.pl.__name__}.trainer.states").RunningStage
        if name == "train_dataloader":
            sampler: DistributedSampler = ResumableDistributedSampler(
                loader.dataset, self.world, self.rank, shuffle=isinstance(loader.sampler, RandomSampler),
                seed=self.seed, drop_last=loader.drop_last, batch_size=loader.batch_size,
                progress=train_progress(self.trainer))
            mode = stage.TRAINING
        else:
            sampler = UnpaddedDistributedSampler(loader.dataset, self.world, self.rank)
            mode = stage.VALIDATING if name == "val_dataloader" else stage.TESTING
        rebuilt = update(loader, sampler, mode=mode)
        rebuilt.generator = torch.Generator().manual_seed(self.seed * 1000 + self.rank)
        context = context_for(loader, preload=(f"{self.ns.fabric.__name__}.utilities.seed",))
        if context is not None:
            rebuilt.multiprocessing_context = context
        return rebuilt
