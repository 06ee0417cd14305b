"""The digits example written against `lightning.pytorch` instead of `pytorch_lightning`."""

from __future__ import annotations

import lightning.pytorch as L

from trainctl.examples.digits import ClassifierCode, DataCode


class DigitsClassifier(ClassifierCode, L.LightningModule):
    pass


class DigitsDataModule(DataCode, L.LightningDataModule):
    pass
