"""Tiny Lightning classes for the spec tests: nested class_path init_args and both Lightning namespaces."""

from __future__ import annotations

import lightning.pytorch as lpl
import pytorch_lightning as pl
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, width: int = 8, depth: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


class WithEncoder(pl.LightningModule):
    """A module whose `encoder` argument is itself a class_path object."""

    def __init__(self, encoder: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.encoder = encoder
        self.lr = lr

    def train_dataloader(self) -> torch.utils.data.DataLoader:  # its own data: the spec needs no `data:`
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 8)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class NewNamespaceModule(lpl.LightningModule):
    """Subclasses lightning.pytorch (the unified package), not pytorch_lightning."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.hidden = hidden


class NewNamespaceData(lpl.LightningDataModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 8)), self.batch_size)


class OldNamespaceData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.batch_size = batch_size


def not_a_class() -> None:
    """A function, not a class: a class_path pointing here is refused."""
