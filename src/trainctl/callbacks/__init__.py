"""Callbacks trainctl adds to every Trainer, bound to the user's Lightning namespace.

One concept per module: checkpoint_io (atomic, verified, async files), resume_checkpoint (the points a requeue
continues from), preemption (agreed stop), rng_state (every rank's RNG in each checkpoint), grad_norm (the seed
design's gradient norm), tracking_logger (MLflow without blocking). Top-k and early stopping are Lightning's own,
whose decisions are already reduced across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainctl.callbacks.binding import make
from trainctl.callbacks.checkpoint_io import AtomicCheckpointIOImpl
from trainctl.callbacks.grad_norm import GradNormLogger
from trainctl.callbacks.preemption import AgreedStopImpl
from trainctl.callbacks.resume_checkpoint import ResumeCheckpointImpl
from trainctl.callbacks.rng_state import RngStateImpl
from trainctl.components import LightningNamespace
from trainctl.spec import Spec


@dataclass
class Built:
    callbacks: list[Any]
    checkpoint_io: Any
    resume: Any
    top_k: Any | None
    save_last: bool = True
    step_metrics: Any = None  # worker.fast_path.AsyncStepMetrics, when worker.speedups installs it
    speedups: Any = None  # worker.speedups.Speedups: what build_trainer installed
    tags: dict[str, str] = field(default_factory=dict)  # the run's tags learned while building and loading data


def build_callbacks(ns: LightningNamespace, spec: Spec, run_dir: Path, user_callbacks: list[Any]) -> Built:
    pl = ns.pl
    ck = spec.checkpoint
    io = make(AtomicCheckpointIOImpl, ns.fabric.plugins.CheckpointIO, async_save=ck.async_save)
    callbacks: list[Any] = [*user_callbacks, make(RngStateImpl, pl.Callback)]
    if spec.early_stopping is not None:
        es = spec.early_stopping
        callbacks.append(pl.callbacks.EarlyStopping(monitor=es.monitor, mode=es.mode.value, patience=es.patience,
                                                    min_delta=es.min_delta, check_finite=True))
    if spec.tracking.log_grad_norm:
        callbacks.append(make(GradNormLogger, pl.Callback, every_n_steps=spec.tracking.log_every_n_steps))
    top_k = None
    if ck.monitor is not None and ck.save_top_k != 0:
        top_k = pl.callbacks.ModelCheckpoint(
            dirpath=run_dir / "checkpoints" / "best", monitor=ck.monitor, mode=ck.mode.value,
            save_top_k=ck.save_top_k, save_last=False, auto_insert_metric_name=False,
            filename="epoch{epoch:03d}-step{step:09d}",
        )
        callbacks.append(top_k)
    resume = make(ResumeCheckpointImpl, pl.callbacks.Checkpoint, run_dir=run_dir,
                  every_n_train_steps=ck.every_n_train_steps, every_n_minutes=ck.every_n_minutes,
                  keep=ck.keep_resume)
    callbacks.append(resume)
    # A Checkpoint subclass too, so Lightning orders it last: it acts after every other epoch-end hook.
    callbacks.append(make(AgreedStopImpl, pl.callbacks.Checkpoint, resume_checkpoint=resume))
    return Built(callbacks, io, resume, top_k, ck.save_last)
