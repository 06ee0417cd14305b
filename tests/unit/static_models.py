"""Classes in the shapes the source reader must settle (or hand to the import) the same way as the import.

String annotations (this module) and evaluated ones (nested_models) both occur; bases come through an alias,
a relative import and a mixin, as in users' modules.
"""

from __future__ import annotations

import functools
import typing
from typing import Literal, Optional

import lightning.pytorch as lpl
import pytorch_lightning as pl
from torch import nn

from .nested_models import OldNamespaceData


class Code:
    """A mixin holding __init__, combined with a LightningModule below (as the digits example does)."""

    def __init__(self, width: int, mode: Literal["fast", "exact"] = "fast", scale: float | None = None,
                 tags: Optional[list[str]] = None, *, name: str = "m", **extra: typing.Any) -> None:  # noqa: UP045
        super().__init__()

    def train_dataloader(self) -> typing.Any:  # the module brings its data: no `data:` needed
        return []


class Mixed(Code, pl.LightningModule):
    pass


class Child(Mixed):
    """Inherits Code's __init__ through Mixed."""


class Strict(pl.LightningModule):
    def __init__(self, depth: typing.Union[int, str] = 1, ratio: float = 0.5, flag: bool = False) -> None:  # noqa: UP007
        super().__init__()


class NoInit(lpl.LightningModule):
    """Lightning's own __init__: (*args, **kwargs)."""

    if typing.TYPE_CHECKING:
        pass
    else:
        def train_dataloader(self) -> typing.Any:  # bound under if/else: still counts as defined
            return []


class NoLoaders(pl.LightningModule):
    """No train_dataloader of its own: a spec without `data:` has nothing to train on."""


class LoaderCode:
    def train_dataloader(self) -> typing.Any:
        return []


class LoadersFirst(LoaderCode, pl.LightningModule):
    """The mixin's train_dataloader comes first in the MRO: it is the one the Trainer calls."""


class LoadersLast(pl.LightningModule, LoaderCode):
    """Lightning's default train_dataloader comes first in the MRO: the mixin's is never called."""


class EmptyData(pl.LightningDataModule):
    """A data module that returns no training loader."""


class WithLayer(pl.LightningModule):
    """An argument typed by a library class: only the import can check it."""

    def __init__(self, layer: nn.Module | None = None) -> None:
        super().__init__()


class Decorated(pl.LightningModule):
    @functools.wraps(pl.LightningModule.__init__)
    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().__init__()


class Data(OldNamespaceData):
    """A data module whose base comes from another file through a relative import."""


class NewData(lpl.LightningDataModule):
    def __init__(self, batch_size: int = 4, shuffle: bool = True) -> None:
        super().__init__()


class NotLightning:
    def __init__(self, width: int = 1) -> None:
        pass
