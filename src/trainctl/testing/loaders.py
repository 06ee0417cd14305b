"""Data modules whose loaders trainctl cannot rebuild, for the tests of what it does instead."""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from trainctl.examples.digits import DigitsDataModule


class BatchSamplerDigits(DigitsDataModule):
    """The digits data whose training loader takes its batches from a batch sampler of its own."""

    def train_dataloader(self) -> DataLoader:
        sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(self.hparams.seed))
        return DataLoader(self.train_set, batch_sampler=BatchSampler(sampler, self.hparams.batch_size, False))
