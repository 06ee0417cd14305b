"""Digits classifier: scikit-learn's bundled 8x8 digits, no download needed."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ClassifierCode:
    """An MLP with dropout; validation accuracy is a torchmetrics metric synced over every rank.

    Written once and mixed into a LightningModule of either Lightning package (see digits_lightning.py).
    """

    def __init__(self, hidden: int = 128, dropout: float = 0.2, lr: float = 3e-3, step_lr_gamma: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.val_acc(logits, y)
        self.log("val/acc", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> dict:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=self.hparams.step_lr_gamma)
        return {"optimizer": opt, "lr_scheduler": sched}


class DataCode:
    """1797 digits split 70/15/15 with a fixed seed; `repeat` enlarges the training set for longer runs."""

    def __init__(self, batch_size: int = 32, num_workers: int = 0, repeat: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.hparams.seed))
        x, y = x[order], y[order]
        n_train, n_val = int(0.7 * len(x)), int(0.15 * len(x))
        rep = self.hparams.repeat
        self.train_set = TensorDataset(x[:n_train].repeat(rep, 1), y[:n_train].repeat(rep))
        self.val_set = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val :], y[n_train + n_val :])

    def _loader(self, ds: TensorDataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class DigitsClassifier(ClassifierCode, pl.LightningModule):
    pass


class DigitsDataModule(DataCode, pl.LightningDataModule):
    pass
