"""Data loading that resumes exactly: the sampler knows the epoch and position from the Trainer's own progress.

trainctl rebuilds the user's map-style loaders with its own distributed samplers:
- train: `ResumableDistributedSampler` reads, when its iterator is created, the epoch being run and how many
  batches of it are already done (restored from the checkpoint), so it shuffles with that epoch's seed and
  skips the finished part. Lightning calls `set_epoch` after creating the first iterator of a resumed run,
  which is why the epoch is read lazily instead (Lightning issue #21938).
- val/test: `UnpaddedDistributedSampler` gives each sample to exactly one rank (no padding duplicates), so
  metrics synced across ranks cover the whole set once.
Each rebuilt loader gets its own torch.Generator, so creating an iterator never draws from the global RNG, and
starts its workers from a forkserver, never by forking the rank beside its threads (worker/loader_workers.py).
Loaders trainctl cannot rebuild (iterable datasets, custom batch samplers, and with the speedups off DataLoader
subclasses) are left to Lightning and resume at the epoch boundary; the run records each in the tag
`trainctl.not_resumable`, and the rank logs a warning.
"""

from __future__ import annotations

import logging
import warnings
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


NOT_RESUMABLE_TAG = "trainctl.not_resumable"
# Lightning's warning on a mid-epoch resume whose training loader has no state_dict of its own.
LIGHTNING_NOT_RESUMABLE = (r"You're resuming from a checkpoint that ended before the epoch ended and your "
                           r"dataloader is not resumable")


def why_not_rebuildable(loader: Any) -> str | None:
    """None when trainctl can put its sampler into `loader`; else what stands in the way."""
    if not isinstance(loader, DataLoader):
        return f"a {type(loader).__name__}, not a DataLoader"
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return "an iterable dataset"
    if loader.batch_size is None:
        return "a custom batch sampler"
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        return f"a custom sampler ({type(loader.sampler).__name__})"
    if not hasattr(loader.dataset, "__len__"):
        return "a dataset without a length"
    return None


def rebuild_loader(ns: Any, loader: DataLoader, sampler: Any, stage: str, internals: bool) -> DataLoader | None:
    """`loader` drawing from `sampler`: needed for exact resume (the sampler holds the position), so it has a path
    on Lightning's internals and a plain one. internals (worker/speedups.py on): Lightning's `_update_dataloader`,
    which also rebuilds DataLoader subclasses. Plain: torch's constructor from the loader's public attributes, for
    a loader of class DataLoader exactly; None for a subclass, whose constructor trainctl does not know."""
    if internals:
        from trainctl.worker.speedups import update_dataloader

        return update_dataloader(ns, loader, sampler, stage)
    if type(loader) is not DataLoader:
        return None
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device, in_order=loader.in_order)


def train_progress(trainer: Any) -> Callable[[], tuple[int, int]]:
    def read() -> tuple[int, int]:
        fit_loop = trainer.fit_loop
        epoch = fit_loop.epoch_progress.current.processed
        # Read when the iterator is created, which (with loader workers) precedes Lightning's own loop reset
        # and its count of the epoch's batches: `processed` is the restored position at both moments.
        return epoch, fit_loop.epoch_loop.batch_progress.current.processed

    return read


class ResumableData:
    """Wraps the `*_dataloader` methods of the user's DataModule (or LightningModule) on this instance only.

    `built` (build_trainer's) says whether the speedups are on and collects the run's tags; without it (the
    benchmarks) the same decision is taken here and the tags stay in `self.tags`."""

    def __init__(self, ns: Any, trainer: Any, seed: int, rank: int, world_size: int, built: Any = None) -> None:
        self.ns, self.trainer, self.seed, self.rank, self.world = ns, trainer, seed, rank, world_size
        if built is not None and built.speedups is not None:
            self.internals = built.speedups.on
        else:
            from trainctl.worker.speedups import decide_for

            self.internals = decide_for(ns).on
        self.tags: dict[str, str] = built.tags if built is not None else {}
        self.not_resumable: dict[str, str] = {}  # loader hook → why trainctl left it to Lightning

    def install(self, source: Any) -> None:
        for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
            original = getattr(source, name, None)
            if original is not None and callable(original):
                setattr(source, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Callable[[], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            loaders = original()
            if isinstance(loaders, (list, tuple)):
                out: Any = type(loaders)(self._rebuild(name, dl) for dl in loaders)
            elif isinstance(loaders, dict):
                out = {k: self._rebuild(name, dl) for k, dl in loaders.items()}
            else:
                out = self._rebuild(name, loaders)
            if name == "train_dataloader" and name not in self.not_resumable:
                # Every training loader draws from a ResumableDistributedSampler, which continues a resumed epoch
                # at its next batch: Lightning's warning that the loader cannot is not true of this run.
                warnings.filterwarnings("ignore", message=LIGHTNING_NOT_RESUMABLE)
            return out

        return wrapped

    def _rebuild(self, name: str, loader: Any) -> Any:
        why = why_not_rebuildable(loader)
        if why is not None:
            return self._left_to_lightning(name, why, loader)
        if name == "train_dataloader":
            sampler: DistributedSampler = ResumableDistributedSampler(
                loader.dataset, self.world, self.rank, shuffle=isinstance(loader.sampler, RandomSampler),
                seed=self.seed, drop_last=loader.drop_last, batch_size=loader.batch_size,
                progress=train_progress(self.trainer))
            stage = "training"
        else:
            sampler = UnpaddedDistributedSampler(loader.dataset, self.world, self.rank)
            stage = "validating" if name == "val_dataloader" else "testing"
        rebuilt = rebuild_loader(self.ns, loader, sampler, stage, self.internals)
        if rebuilt is None:
            return self._left_to_lightning(name, f"a DataLoader subclass ({type(loader).__name__}) with the "
                                                 f"speedups off", loader)
        rebuilt.generator = torch.Generator().manual_seed(self.seed * 1000 + self.rank)
        context = context_for(loader, preload=(f"{self.ns.fabric.__name__}.utilities.seed",))
        if context is not None:
            rebuilt.multiprocessing_context = context
        return rebuilt

    def _left_to_lightning(self, name: str, why: str, loader: Any) -> Any:
        if name not in self.not_resumable:
            self.not_resumable[name] = why
            log.warning("%s returns %s: trainctl leaves it to Lightning, %s", name, why,
                        "a resume restarts its epoch" if name == "train_dataloader" else
                        "Lightning's sampler may repeat samples across ranks")
            self.tags[NOT_RESUMABLE_TAG] = "; ".join(f"{k}: {v}" for k, v in self.not_resumable.items())
        return loader
