"""The Lightning logger that feeds MLflow through the non-blocking MetricsSink (global rank 0 only).

Unlike Lightning's MLFlowLogger it never ends the run: `finalize` only drains the sink, because an attempt
that will be requeued must leave the run open. Only trainctl sets terminal states (tracking.set_state).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from trainctl.metrics import MetricsSink


class TrackingLoggerImpl:
    def __init__(self, run_id: str, save_dir: str, sink: MetricsSink | None) -> None:
        super().__init__()
        self.run_id, self.sink, self._save_dir = run_id, sink, save_dir

    @property
    def name(self) -> str:
        return "trainctl"

    @property
    def version(self) -> str:
        return self.run_id

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def experiment(self) -> Any:
        return self.sink

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """The resolved spec is logged at submit; init_args are part of it, so nothing to add here."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.sink is not None:
            self.sink.add(metrics, step if step is not None else 0)

    def save(self) -> None:
        if self.sink is not None:
            self.sink.nudge()

    def finalize(self, status: str) -> None:
        if self.sink is not None:
            self.sink.wake.set()  # the end of a stage: deliver what is pending now
