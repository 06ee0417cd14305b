"""worker/hook_dispatch.py: the same hooks, in the same order, with the same arguments as Lightning's dispatch."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainctl.components import namespace_named
from trainctl.worker import hook_dispatch


def _recorder(ns: Any, log: list[tuple[str, ...]]) -> tuple[Any, Any]:
    class Recording(ns.pl.Callback):
        """Overrides a handful of hooks; every other hook stays the base's empty method."""

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            log.append(("cb.on_train_batch_end", pl_module._current_fx_name, str(idx)))

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            log.append(("cb.on_before_optimizer_step", pl_module._current_fx_name))

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            log.append(("cb.on_validation_epoch_end", pl_module._current_fx_name))

    class Silent(ns.pl.Callback):
        """Overrides nothing; one hook set on the instance instead."""

    class Model(ns.pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            log.append(("module.training_step", self._current_fx_name))
            loss = torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch: Any, idx: int) -> None:
            self.log("val/loss", torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1]))

        def on_train_epoch_end(self) -> None:
            log.append(("module.on_train_epoch_end", self._current_fx_name))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    silent = Silent()
    silent.on_train_epoch_start = lambda trainer, pl_module: log.append(("instance.on_train_epoch_start",))
    return [Recording(), silent], Model()


def _fit(ns: Any) -> tuple[list[tuple[str, ...]], dict[str, float]]:
    torch.manual_seed(0)
    log: list[tuple[str, ...]] = []
    callbacks, model = _recorder(ns, log)
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    trainer = ns.pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=True,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                            default_root_dir=None, limit_val_batches=2)
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    return log, {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("name", ["pytorch_lightning", "lightning.pytorch"])
def test_lean_dispatch_calls_what_lightning_calls(name: str, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    ns = namespace_named(name)
    call = importlib.import_module(f"{name}.trainer.call")
    expected, metrics = _fit(ns)
    for attr in ("_call_callback_hooks", "_call_lightning_module_hook"):  # restored after the test
        monkeypatch.setattr(call, attr, getattr(call, attr))
    hook_dispatch.install(ns)
    assert getattr(call._call_callback_hooks, "trainctl_lean", False)
    got, lean_metrics = _fit(ns)
    assert got == expected and len(got) > 20
    assert lean_metrics == metrics


def test_overrides() -> None:
    ns = namespace_named("pytorch_lightning")

    class Partial(ns.pl.Callback):
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None: ...

    cb = Partial()
    assert hook_dispatch.overrides(cb, "on_fit_start", ns.pl.Callback)
    assert not hook_dispatch.overrides(cb, "on_train_batch_end", ns.pl.Callback)
    cb.on_train_batch_end = lambda *a: None
    assert hook_dispatch.overrides(cb, "on_train_batch_end", ns.pl.Callback)
