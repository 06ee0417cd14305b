"""worker/speedups.py: the version gate, the switch, and the two adapters with a plain path (no processes)."""

from __future__ import annotations

import importlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, TensorDataset

from trainctl.callbacks.binding import make
from trainctl.callbacks.preemption import AgreedStopImpl, RequeueRequested
from trainctl.components import namespace_named
from trainctl.injob import STOP
from trainctl.spec import parse_spec
from trainctl.worker import speedups
from trainctl.worker.build import build_trainer
from trainctl.worker.data import ResumableData, ResumableDistributedSampler, rebuild_loader

from .spec_helpers import digits_raw

PL = "pytorch_lightning"


@pytest.mark.parametrize(("version", "on"), [("2.6.0", True), ("2.6.6", True), ("2.6.7rc1", True), ("2.7.0", False),
                                             ("2.5.5", False), ("3.0.0", False), ("nightly", False)])
def test_the_version_gate(version: str, on: bool) -> None:
    decision = speedups.decide(version, {})
    assert decision.on is on
    if not on:
        assert decision.reason == f"Lightning {version} is outside the tested range >=2.6,<2.7"


@pytest.mark.parametrize(("value", "on"), [("", True), ("1", True), ("on", True), ("0", False), ("off", False),
                                           ("False", False), ("no", False)])
def test_the_switch(value: str, on: bool) -> None:
    decision = speedups.decide("2.6.6", {speedups.ENV: value})
    assert decision.on is on
    assert on or decision.reason == f"TRAINCTL_SPEEDUPS={value}"


@pytest.fixture
def lightning_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The speedups patch the Lightning namespace process-wide, and the agreed stop installs signal handlers and
    reads the process's stop flag: all of it is put back after the test."""
    ns = namespace_named(PL)
    call = importlib.import_module(f"{PL}.trainer.call")
    result = importlib.import_module(f"{PL}.trainer.connectors.logger_connector.result")._ResultMetric
    for attr in ("_call_callback_hooks", "_call_lightning_module_hook"):
        monkeypatch.setattr(call, attr, getattr(call, attr))
    monkeypatch.setattr(result, "to", result.to)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    yield ns
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    STOP.signum, STOP.received_at = None, None
    STOP.events.clear()


class StopAtStep:
    """Raises the stop flag on this rank after `step` (as a signal handler would)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            STOP.handler(signal.SIGTERM, None)


class Recorder:
    """A Lightning logger that keeps each (step, key) it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[int, str]] = []

    name, version = "recorder", "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.points += [(int(step or 0), key) for key in metrics]

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


def _trainer(ns: Any, run_dir: Path, stop_at: int | None = None) -> tuple[Any, Any, Any, Any, Any]:
    raw = digits_raw()
    raw["resources"]["devices_per_node"] = 1
    raw["trainer"] = {"max_steps": 6, "limit_val_batches": 0, "deterministic": True}
    raw["early_stopping"] = None
    raw["checkpoint"].update(every_n_train_steps=None, monitor=None, async_save=False)
    spec = parse_spec(raw, "job.yaml", check_classes=False)
    ns.pl.seed_everything(7, verbose=False)
    from trainctl.examples.digits import DigitsClassifier, DigitsDataModule

    extra = (make(StopAtStep, ns.pl.Callback, stop_at),) if stop_at is not None else ()
    trainer, built = build_trainer(ns, spec, run_dir, "unit", None, extra_callbacks=extra)
    recorder = make(Recorder, ns.pl.loggers.Logger)
    trainer.loggers = [*trainer.loggers, recorder]
    data = DigitsDataModule(batch_size=16)
    ResumableData(ns, trainer, 7, 0, 1, built).install(data)
    return trainer, built, DigitsClassifier(), data, recorder


def test_install_on_a_tested_version(lightning_restored: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = lightning_restored
    monkeypatch.delenv(speedups.ENV, raising=False)
    trainer, built, *_ = _trainer(ns, tmp_path)
    assert built.speedups.on and built.tags[speedups.TAG] == f"on: {', '.join(built.speedups.installed)}"
    assert getattr(importlib.import_module(f"{PL}.trainer.call")._call_callback_hooks, "trainctl_lean", False)
    assert built.step_metrics is not None and trainer._logger_connector.log_metrics == built.step_metrics.log_metrics
    assert [cb.log_step for cb in trainer.callbacks if isinstance(cb, AgreedStopImpl)] == [speedups.log_step_metrics]


@pytest.mark.parametrize(("version", "env", "why"), [
    ("2.6.6", "0", "TRAINCTL_SPEEDUPS=0"),
    ("2.7.1", "", "Lightning 2.7.1 is outside the tested range >=2.6,<2.7"),
])
def test_off_installs_nothing_and_says_why(lightning_restored: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture, version: str, env: str, why: str) -> None:
    ns = lightning_restored
    monkeypatch.setenv(speedups.ENV, env)
    monkeypatch.setattr(ns.pl, "__version__", version)
    with caplog.at_level(logging.INFO, logger="trainctl.speedups"):
        trainer, built, *_ = _trainer(ns, tmp_path)
    said = [r.getMessage() for r in caplog.records if r.name == "trainctl.speedups"]
    assert said == [f"speedups off ({why}): Lightning's own code paths run"]
    assert not built.speedups.on and built.tags[speedups.TAG] == f"off: {why}"
    call = importlib.import_module(f"{PL}.trainer.call")
    assert not getattr(call._call_callback_hooks, "trainctl_lean", False)
    assert built.step_metrics is None and "log_metrics" not in vars(trainer._logger_connector)
    assert "_broadcast_sigterm_tensor" not in vars(trainer.fit_loop.epoch_loop)
    assert [cb.log_step for cb in trainer.callbacks if isinstance(cb, AgreedStopImpl)] == [None]


def test_the_agreed_stop_saves_and_logs_its_step_on_both_paths(lightning_restored: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Internals (the step logged from its own hook) and plain path (left at the next hook): the same checkpoint,
    the same history, which holds the stopped step and nothing after it."""
    ns = lightning_restored
    seen = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(speedups.ENV, switch)
        STOP.signum = None
        run_dir = tmp_path / switch
        trainer, built, model, data, recorder = _trainer(ns, run_dir, stop_at=3)
        with pytest.raises(RequeueRequested) as stop:
            trainer.fit(model, datamodule=data)
        built.checkpoint_io.teardown()
        assert stop.value.step == 3 and Path(stop.value.checkpoint).is_file()
        ckpt = torch.load(stop.value.checkpoint, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 3
        steps = sorted({s for s, key in recorder.points if key == "train/loss"})
        assert steps == [0, 1, 2], f"{switch}: Lightning logs global step k as step k-1; every step once: {steps}"
        seen[switch] = ckpt["state_dict"], steps
    on, off = seen["1"], seen["0"]
    assert on[1] == off[1] and all(torch.equal(on[0][k], off[0][k]) for k in on[0])


def _batches(loader: DataLoader) -> list[list[int]]:
    return [batch[0].flatten().tolist() for batch in loader]


def test_loader_rebuild_plain_path_equals_lightnings() -> None:
    ns = namespace_named(PL)
    ds = TensorDataset(torch.arange(40))
    loader = DataLoader(ds, batch_size=4, shuffle=True, drop_last=True)

    def sampler() -> ResumableDistributedSampler:
        return ResumableDistributedSampler(ds, 2, 1, shuffle=True, seed=3, drop_last=True, batch_size=4,
                                           progress=lambda: (1, 2))

    plain = rebuild_loader(ns, loader, sampler(), "training", internals=False)
    lightning = rebuild_loader(ns, loader, sampler(), "training", internals=True)
    assert plain is not None and type(plain) is DataLoader and plain.drop_last and plain.batch_size == 4
    assert _batches(plain) == _batches(lightning) and len(_batches(plain)) == 3, "epoch 1, 2 of 5 batches done"

    class Mine(DataLoader):
        pass

    assert rebuild_loader(ns, Mine(ds, batch_size=4), sampler(), "training", internals=False) is None


class Stream(IterableDataset):
    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.arange(8))


def test_loaders_left_to_lightning_are_tagged() -> None:
    ns = namespace_named(PL)
    ds = TensorDataset(torch.arange(8))
    data = type("Data", (), {
        "train_dataloader": lambda self: DataLoader(Stream(), batch_size=2),
        "val_dataloader": lambda self: [DataLoader(ds, batch_size=2),
                                        DataLoader(ds, sampler=RandomSampler(ds), batch_size=None)],
    })()
    path = ResumableData(ns, None, 0, 0, 1)
    path.install(data)
    train, (val, custom) = data.train_dataloader(), data.val_dataloader()
    assert isinstance(train.dataset, Stream) and custom.batch_size is None, "left as they were"
    assert val.sampler.__class__.__name__ == "UnpaddedDistributedSampler"
    assert path.tags == {"trainctl.not_resumable": "train_dataloader: an iterable dataset; "
                                                   "val_dataloader: a custom batch sampler"}
