"""One switch for every place trainctl reaches into Lightning's private code, and the version gate in front of it.

Speedups (each measured; each replaces a Lightning internal, so each is tied to the versions it was tested with):
- lean_hooks: per-step hook calls without the profiler wrappers and empty base methods (worker/hook_dispatch.py);
- async_step_metrics: step metrics handed to the loggers without a host sync, `self.log` without no-op metric moves
  or an unused progress-bar `.item()`, and `grad/norm` without `self.log`'s bookkeeping (worker/fast_path.py);
- no_sigterm_broadcast: Lightning's blocking per-step SIGTERM broadcast is skipped: trainctl's signal handlers
  replace Lightning's (injob.py), so that broadcast only ever sends 0, and the agreed stop's
  asynchronous reduce carries the signal instead (callbacks/preemption.py).
Adapters that two correctness features go through; each has a plain path on public API, used when this is off:
- stop_logs_now: the agreed stop logs its step's metrics itself and leaves at once (plain: it leaves at the next
  hook, after Lightning has logged them) — callbacks/preemption.py;
- loader_rebuild: resumable samplers go into the user's loaders through Lightning's `_update_dataloader`, which
  also rebuilds DataLoader subclasses (plain: torch's DataLoader constructor) — worker/data.py.

All are on by default on a Lightning version in TESTED; `TRAINCTL_SPEEDUPS=0` in the ranks' environment turns
them off, and so does any other Lightning version (one log line says why). The run's tag `trainctl.speedups`
says which applied. Off, every run is still correct (exact resume, the agreed stop, every step logged once),
only slower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("trainctl.speedups")

ENV = "TRAINCTL_SPEEDUPS"
TAG = "trainctl.speedups"
TESTED = ("2.6", "2.7")  # Lightning versions >= TESTED[0] and < TESTED[1]: what the patches were tested with
OFF_VALUES = ("0", "off", "false", "no")


@dataclass(frozen=True)
class Decision:
    on: bool
    reason: str


def tested(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version)
    except InvalidVersion:
        return False
    return Version(TESTED[0]) <= Version(v.base_version) < Version(TESTED[1])


def decide(version: str, env: Mapping[str, str] = os.environ) -> Decision:
    """Speedups on or off for this Lightning version and environment, and why (for the log line and the tag)."""
    value = env.get(ENV, "").strip()
    if value.lower() in OFF_VALUES:
        return Decision(False, f"{ENV}={value}")
    if not tested(version):
        return Decision(False, f"Lightning {version} is outside the tested range >={TESTED[0]},<{TESTED[1]}")
    return Decision(True, f"Lightning {version}")


def decide_for(ns: Any) -> Decision:
    return decide(ns.pl.__version__)


@dataclass(frozen=True)
class Speedups:
    decision: Decision
    installed: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return self.decision.on

    def tag(self) -> str:
        return f"on: {', '.join(self.installed)}" if self.on else f"off: {self.decision.reason}"


def install(ns: Any, trainer: Any, built: Any) -> Speedups:
    """Install every speedup into this rank's freshly built Trainer, or none; record which in `built.tags`."""
    from trainctl.callbacks.grad_norm import GradNormLogger
    from trainctl.callbacks.preemption import AgreedStopImpl
    from trainctl.worker import hook_dispatch
    from trainctl.worker.fast_path import AsyncStepMetrics, DrainImpl

    decision = decide_for(ns)
    if not decision.on:
        if trainer.is_global_zero:
            log.info("speedups off (%s): Lightning's own code paths run", decision.reason)
        result = Speedups(decision)
    else:
        hook_dispatch.install(ns)
        metrics = AsyncStepMetrics(trainer).install(ns)
        built.step_metrics = metrics
        for callback in trainer.callbacks:
            if isinstance(callback, DrainImpl):
                callback.metrics = metrics
            elif isinstance(callback, GradNormLogger):
                callback.step_metrics = metrics
            elif isinstance(callback, AgreedStopImpl):
                callback.log_step = log_step_metrics
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
        result = Speedups(decision, ("lean_hooks", "async_step_metrics", "no_sigterm_broadcast", "stop_logs_now",
                                     "loader_rebuild"))
    built.speedups = result
    built.tags[TAG] = result.tag()
    return result


def log_step_metrics(trainer: Any) -> None:
    """Hand the running step's metrics to the loggers now, from its on_train_batch_end hooks (Lightning does it
    right after them): the agreed stop then leaves from that hook with its step logged (callbacks/preemption.py)."""
    trainer._logger_connector.update_train_step_metrics()


def update_dataloader(ns: Any, loader: Any, sampler: Any, stage: str) -> Any:
    """Lightning's `_update_dataloader`: `loader` rebuilt around `sampler`, a DataLoader subclass included (from
    the arguments Lightning recorded when the user's hook created it). stage: training, validating or testing."""
    from importlib import import_module

    update = import_module(f"{ns.pl.__name__}.utilities.data")._update_dataloader
    mode = getattr(import_module(f"{ns.pl.__name__}.trainer.states").RunningStage, stage.upper())
    return update(loader, sampler, mode=mode)
