"""One rank's fit: the user's objects, trainctl's Trainer, the resumable data path; fit; test.

`worker.entrypoint.train` wraps this in the run's bookkeeping (attempts, MLflow, the verdict); the benchmarks call
it bare, so that what they time is the path a submitted job runs. It raises whatever the fit raises: who is at
fault is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainctl.callbacks import Built
from trainctl.callbacks.binding import make
from trainctl.components import LightningNamespace, import_class, instantiate, namespace_of
from trainctl.metrics import MetricsSink
from trainctl.spec import Spec, resolve_env
from trainctl.worker.build import build_trainer
from trainctl.worker.data import ResumableData
from trainctl.worker.watchdog import HeartbeatImpl, Watchdog


@dataclass
class Fit:
    """What a fit is made of, handed to `started` as soon as the Trainer exists, so that a caller can reach it
    mid-fit or after a failure (the watchdog's early end uploads `built`'s checkpoints, `train`'s end drains and
    tears down its checkpoint IO; a benchmark wraps timers around its parts)."""

    ns: LightningNamespace
    model: Any
    data: Any
    trainer: Any
    built: Built


def fit(spec: Spec, run_dir: Path, run_id: str, sink: MetricsSink | None, global_rank: int, world_size: int, *,
        watchdog: Watchdog | None = None, ckpt_path: Path | None = None, strategy: Any = None,
        objects: tuple[Any, Any] | None = None, started: Callable[[Fit], None] | None = None) -> Fit:
    """Build and train one rank. `objects`: the model and data module when the caller made them itself (seeded,
    without the spec's class paths: the GPU benchmark runs where jsonargparse is not installed)."""
    if objects is None:
        ns = namespace_of(import_class(spec.model.class_path))
        if spec.seed_everything is not None:
            ns.pl.seed_everything(spec.seed_everything, workers=True, verbose=False)
        model = instantiate(resolve_env(spec.model), ns.pl.LightningModule)
        data = instantiate(resolve_env(spec.data), ns.pl.LightningDataModule) if spec.data else None
    else:
        model, data = objects
        ns = namespace_of(type(model))
    heartbeat = (make(HeartbeatImpl, ns.pl.Callback, watchdog),) if watchdog is not None else ()
    trainer, built = build_trainer(ns, spec, run_dir, run_id, sink, strategy=strategy, extra_callbacks=heartbeat)
    done = Fit(ns, model, data, trainer, built)
    if started is not None:
        started(done)
    ResumableData(ns, trainer, spec.seed_everything or 0, global_rank, world_size, built).install(
        data if data is not None else model)
    trainer.fit(model, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if has_test(ns, model, data):
        best = built.top_k.best_model_path if built.top_k else ""
        trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)
    return done


def has_test(ns: LightningNamespace, model: Any, data: Any) -> bool:
    """Test only a module that can be tested: Lightning raises on `trainer.test` without a loader and a step."""
    from lightning_utilities.core.overrides import is_overridden

    has_loader = (data is not None and is_overridden("test_dataloader", data, ns.pl.LightningDataModule)) or \
        is_overridden("test_dataloader", model, ns.pl.LightningModule)
    return has_loader and is_overridden("test_step", model, ns.pl.LightningModule)
