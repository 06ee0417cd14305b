"""`self.logger` on every rank: what Lightning's MLFlowLogger offers, attached to the job's MLflow run.

Modules written against MLflow's and Lightning's docs work unchanged: `self.logger.experiment` is an MlflowClient
on global rank 0 and a no-op stand-in on the other ranks (as MLFlowLogger's `rank_zero_experiment`), so
`self.logger.experiment.log_text(self.logger.run_id, ...)` may run on every rank; `run_id`, `experiment_id` and
`save_dir` (the run directory) answer on every rank. A user's own MlflowClient call is the user's: its failure is
the module's exception, as it would be with MLFlowLogger.

Metrics and hyperparameters go through the non-blocking MetricsSink: training never waits on the server, and
nothing is lost while it is down. Hyperparameters land under `hparams/` beside the spec's params (trainctl.hparams).
Unlike MLFlowLogger it never ends the run: `finalize` only wakes the sink, because an attempt that will be requeued
must leave the run open. Only trainctl sets terminal states (tracking.set_state).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable
from typing import Any

from trainctl import hparams
from trainctl.metrics import MetricsSink


class NoOpExperiment:
    """What `experiment` is off rank 0: every attribute is a function that does nothing (Lightning's stand-in)."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _: str) -> Callable[..., None]:
        return self.nop

    def __getitem__(self, idx: int) -> NoOpExperiment:
        return self

    def __setitem__(self, *args: Any) -> None:
        pass


class TrackingLoggerImpl:
    """Global rank 0 holds the sink (worker.entrypoint creates it there only); the other ranks log nothing."""

    def __init__(self, run_id: str, save_dir: str, sink: MetricsSink | None, tracking_uri: str) -> None:
        super().__init__()
        self._run_id, self.sink, self._save_dir, self.tracking_uri = run_id, sink, save_dir, tracking_uri
        self._client: Any = None
        self._experiment_id: str | None = None
        self._epoch_step = -1  # the step of the last `epoch` point
        self.latest: dict[str, float] = {}  # the newest value of each metric, host numbers (progress lines)

    @property
    def name(self) -> str:
        return "trainctl"

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def experiment_id(self) -> str:
        """Asked of MLflow once per rank, when first read."""
        if self._experiment_id is None:
            self._experiment_id = self._mlflow().get_run(self._run_id).info.experiment_id
        return self._experiment_id

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def experiment(self) -> Any:
        return self._mlflow() if self.sink is not None else NoOpExperiment()

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        if self.sink is not None:
            self.sink.add_params(hparams.as_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.sink is None:
            return
        step = step if step is not None else 0
        # Lightning adds `epoch` to every call; the validation and epoch-end calls repeat the last step's.
        if "epoch" in metrics:
            if step <= self._epoch_step:
                metrics = {k: v for k, v in metrics.items() if k != "epoch"}
            else:
                self._epoch_step = step
        numbers = {k: v for k, v in metrics.items() if not isinstance(v, str)}
        self.latest.update(numbers)
        self.sink.add(numbers, step)

    def save(self) -> None:
        if self.sink is not None:
            self.sink.nudge()

    def finalize(self, status: str) -> None:
        if self.sink is not None:
            self.sink.wake.set()  # the end of a stage: deliver what is pending now
