"""Inside a trial's ranks: report the sweep's metric at each validation, and stop together when it is pruned.

Global rank 0 records the value (metric.json, the value the trial is ranked by), reports it to the study and
asks the pruner; the decision is broadcast so that every rank stops at the same step (as early stopping does)
and the trial ends FINISHED. The trial's spec carries this callback (trainctl.sweep.trial adds it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

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


class SweepReporter(ReporterImpl, pl.Callback):
    """The callback for a `pytorch_lightning` Trainer (trainctl's own namespace)."""

