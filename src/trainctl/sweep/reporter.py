"""Inside a trial's ranks: report the sweep's metric at each validation, and stop together when it is pruned.

Global rank 0 records the value (metric.json, the value the trial is ranked by), reports it to the study and
asks the pruner; the decision is broadcast so that every rank stops at the same step (as early stopping does)
and the trial ends FINISHED. The trial's spec carries this callback (trainctl.sweep.trial adds it), bound to the
Lightning namespace its module subclasses: a Trainer accepts only callbacks of its own namespace.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trainctl.sweep import engine
from trainctl.sweep.layout import SweepFile, read_json, write_json
from trainctl.sweep.space import parse_sweep


class ReporterImpl:
    def __init__(self, sweep_dir: str, trial_dir: str) -> None:
        self.sweep_dir, self.trial_dir = Path(sweep_dir), Path(trial_dir)
        self.cfg = parse_sweep(SweepFile.read(self.sweep_dir).sweep)
        self.validations = 0

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.validations = int(state.get("validations", 0))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        prune = False
        if trainer.global_rank == 0:
            value = trainer.callback_metrics.get(self.cfg.metric)
            if value is not None:
                value = float(value)
                write_json(self.trial_dir / "metric.json", {"value": value, "rung": self.validations,
                                                            "step": trainer.global_step, "time": time.time()})
                if self.cfg.pruner["kind"] != "none":
                    trial = read_json(self.trial_dir / "params.json") or {}
                    prune = engine.report(self.sweep_dir, self.cfg, int(trial["trial_id"]), self.validations, value)
        if self.cfg.pruner["kind"] != "none":
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            trainer.should_stop = True
            if trainer.global_rank == 0:
                write_json(self.trial_dir / "pruned.json", {"rung": self.validations, "step": trainer.global_step})


# the callback's name in each Lightning namespace
NAMES = {"pytorch_lightning": "SweepReporter", "lightning.pytorch": "SweepReporterLightning"}


def class_path(model_class_path: str) -> str:
    """The reporter for the namespace whose LightningModule the trial's model subclasses."""
    from trainctl.components import import_class, namespace_of

    ns = namespace_of(import_class(model_class_path))
    return f"{__name__}.{NAMES[ns.name if ns else 'pytorch_lightning']}"


def __getattr__(name: str) -> type:
    """SweepReporter (pytorch_lightning) and SweepReporterLightning (lightning.pytorch), built when first named, so
    that a trial imports its own namespace only."""
    for ns_name, cls_name in NAMES.items():
        if name == cls_name:
            from trainctl.components import namespace_named

            cls = type(name, (ReporterImpl, namespace_named(ns_name).pl.Callback),
                       {"__module__": __name__, "__qualname__": name})
            globals()[name] = cls
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
