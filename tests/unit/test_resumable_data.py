"""Exact resume of the data order (worker/data.py): which samples a resumed epoch still feeds each rank."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader, DistributedSampler

from trainctl.worker.data import ResumableDistributedSampler, UnpaddedDistributedSampler, train_progress

DATA = list(range(103))  # not a multiple of ranks x batch: padding and a short last batch are in play


def _sampler(rank: int, world: int, epoch: int, done: int, shuffle: bool = True, drop_last: bool = False,
             batch: int = 8) -> ResumableDistributedSampler:
    return ResumableDistributedSampler(DATA, world, rank, shuffle=shuffle, seed=7, drop_last=drop_last,
                                       batch_size=batch, progress=lambda: (epoch, done))


def _whole_epoch(rank: int, world: int, epoch: int, shuffle: bool = True, drop_last: bool = False) -> list[int]:
    """What torch's own DistributedSampler gives this rank in this epoch: the order a resume must continue."""
    plain = DistributedSampler(DATA, world, rank, shuffle=shuffle, seed=7, drop_last=drop_last)
    plain.set_epoch(epoch)
    return list(plain)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_a_resumed_epoch_feeds_the_rest_of_the_same_order(shuffle: bool, drop_last: bool) -> None:
    for world in (1, 2, 3):
        for rank in range(world):
            whole = _whole_epoch(rank, world, 4, shuffle, drop_last)
            assert list(_sampler(rank, world, 4, 0, shuffle, drop_last)) == whole
            for done in (1, 2, len(whole) // 8):
                assert list(_sampler(rank, world, 4, done, shuffle, drop_last)) == whole[done * 8:], (world, done)


def test_batches_after_a_resume_are_the_uninterrupted_batches() -> None:
    """Through a DataLoader: the resumed batches are the uninterrupted epoch's batches from the resume point on."""
    for rank in (0, 1):
        uninterrupted = [b.tolist() for b in DataLoader(DATA, batch_size=8, sampler=_sampler(rank, 2, 3, 0))]
        resumed = [b.tolist() for b in DataLoader(DATA, batch_size=8, sampler=_sampler(rank, 2, 3, 4))]
        assert resumed == uninterrupted[4:] and len(uninterrupted) == 7


def test_the_epoch_comes_from_the_trainer_not_from_set_epoch() -> None:
    """Lightning calls set_epoch after creating a resumed run's first iterator: the epoch is read when iterating."""
    sampler = _sampler(0, 2, 5, 0)
    sampler.set_epoch(0)
    assert list(sampler) == _whole_epoch(0, 2, 5) != _whole_epoch(0, 2, 0)
    assert sampler.epoch == 5


def test_a_finished_epoch_starts_the_next_one_whole() -> None:
    whole = _whole_epoch(1, 2, 2)
    per_rank_batches = -(-len(whole) // 8)
    for done in (per_rank_batches, per_rank_batches + 3):
        assert list(_sampler(1, 2, 2, done)) == whole


@pytest.mark.filterwarnings("ignore:The `srun` command")
def test_the_position_is_the_trainers_restored_progress() -> None:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    read = train_progress(trainer)
    assert read() == (0, 0)
    trainer.fit_loop.epoch_progress.current.processed = 3  # what a checkpoint of epoch 3, batch 11 restores
    trainer.fit_loop.epoch_loop.batch_progress.current.processed = 11
    assert read() == (3, 11)


def test_evaluation_gives_each_sample_to_exactly_one_rank() -> None:
    for world in (1, 2, 3, 4):
        seen = [i for rank in range(world) for i in UnpaddedDistributedSampler(DATA, world, rank)]
        assert sorted(seen) == DATA, world
        assert [len(UnpaddedDistributedSampler(DATA, world, r)) for r in range(world)] == \
               [len(list(UnpaddedDistributedSampler(DATA, world, r))) for r in range(world)]
