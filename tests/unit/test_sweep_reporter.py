"""The sweep's reporter in a real Trainer of each Lightning namespace: a trial of a `lightning.pytorch` module gets
a `lightning.pytorch` callback, records its metric at each validation and reports it to the study; the pruner's
answer stops the fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainctl.components import instantiate, namespace_named
from trainctl.spec_types import Component
from trainctl.sweep import engine, reporter
from trainctl.sweep.layout import SweepFile, read_json, write_json
from trainctl.sweep.space import parse_sweep

MODELS = {"pytorch_lightning": "trainctl.examples.digits", "lightning.pytorch": "trainctl.examples.digits_lightning"}


def _sweep(tmp: Path, pruner: str | dict) -> tuple[Path, Path]:
    raw = {"method": "random", "trials": 2, "metric": "val/loss", "pruner": pruner,
           "space": {"model.init_args.lr": {"uniform": [0.001, 0.01]}}}
    SweepFile("0" * 32, "sqlite:///unused.db", "local", {}, raw).write(tmp)
    cfg = parse_sweep(raw)
    engine.create(tmp, cfg)
    number, trial_id, params = engine.ask(tmp, cfg, 0)
    td = tmp / "trials" / "0000"
    write_json(td / "params.json", {"index": 0, "number": number, "trial_id": trial_id, "params": params})
    return tmp, td


def _fit(namespace: str, sd: Path, td: Path, epochs: int) -> object:
    ns = namespace_named(namespace)
    path = reporter.class_path(f"{MODELS[namespace]}.DigitsClassifier")
    assert path.endswith(reporter.NAMES[namespace])
    callback = instantiate(Component(path, {"sweep_dir": str(sd), "trial_dir": str(td)}), ns.pl.Callback)
    assert isinstance(callback, ns.pl.Callback)
    module = __import__(MODELS[namespace], fromlist=["DigitsClassifier"])
    trainer = ns.pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, callbacks=[callback],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(module.DigitsClassifier(hidden=16), module.DigitsDataModule(batch_size=16))
    return trainer


@pytest.mark.parametrize("namespace", list(MODELS))
def test_the_reporter_records_each_validation_in_either_namespace(namespace: str, tmp_path: Path) -> None:
    sd, td = _sweep(tmp_path, "none")
    trainer = _fit(namespace, sd, td, epochs=2)
    metric = read_json(td / "metric.json") or {}
    assert metric["rung"] == 2 and metric["step"] == trainer.global_step == 4  # type: ignore[attr-defined]
    assert metric["value"] == pytest.approx(float(trainer.callback_metrics["val/loss"]))  # type: ignore[attr-defined]
    assert not (td / "pruned.json").exists()


def test_a_pruned_lightning_pytorch_trial_stops_at_its_rung(tmp_path: Path) -> None:
    """The median pruner against a finished trial that did far better at every rung: this one stops at rung 1."""
    sd, td = _sweep(tmp_path, {"kind": "median", "n_startup_trials": 1})
    cfg = parse_sweep(SweepFile.read(sd).sweep)
    number, trial_id, _ = engine.ask(sd, cfg, 1)
    for rung in range(1, 4):
        engine.report(sd, cfg, trial_id, rung, -1.0)
    engine.tell(sd, cfg, number, "complete", -1.0)
    trainer = _fit("lightning.pytorch", sd, td, epochs=3)
    assert json.loads((td / "pruned.json").read_text())["rung"] == 1
    assert trainer.global_step == 2  # type: ignore[attr-defined]
