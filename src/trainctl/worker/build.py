"""Build the Trainer for one rank from the spec: DDP or FSDP, the callbacks, the logger and the checkpoint IO."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from trainctl.callbacks import Built, build_callbacks
from trainctl.callbacks.binding import make
from trainctl.callbacks.grad_norm import GradNormLogger
from trainctl.callbacks.progress import ProgressImpl
from trainctl.callbacks.tracking_logger import TrackingLoggerImpl
from trainctl.components import LightningNamespace, instantiate
from trainctl.metrics import MetricsSink
from trainctl.spec import Accelerator, Spec, Strategy, resolve_env
from trainctl.worker import fsdp, speedups
from trainctl.worker.fast_path import DrainImpl


def accelerator(spec: Spec) -> str:
    if spec.resources.accelerator is Accelerator.auto:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return spec.resources.accelerator.value


def build_trainer(ns: LightningNamespace, spec: Spec, run_dir: Path, run_id: str, sink: MetricsSink | None,
                  strategy: Any = None, extra_callbacks: tuple[Any, ...] = ()) -> tuple[Any, Built]:
    """A Trainer whose strategy, devices, logger, callbacks and checkpoint IO trainctl owns."""
    user_callbacks = [instantiate(resolve_env(c), ns.pl.Callback) for c in spec.callbacks]  # type: ignore[arg-type]
    built = build_callbacks(ns, spec, run_dir, [*user_callbacks, *extra_callbacks])
    built.callbacks.append(make(ProgressImpl, ns.pl.Callback))  # prints on global rank 0 only
    acc = accelerator(spec)
    if acc == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        # resources.cpus_per_task is the rank's share of the cores; torch would start one thread per visible core
        # in every rank (2 ranks on 2 cores: 4 busy threads fighting over 2 cores).
        torch.set_num_threads(spec.resources.cpus_per_task)
    built.callbacks.append(make(DrainImpl, ns.pl.Callback))  # idle unless the speedups give it step metrics
    world = spec.resources.nodes * spec.resources.devices_per_node
    plugins: list[Any] = []
    if strategy is None and spec.resources.strategy is Strategy.fsdp:
        # on one rank too: the same checkpoints, loadable on any number of ranks
        strategy = fsdp.build_strategy(ns, spec, acc, built.checkpoint_io, built.tags)
    elif strategy is None and world == 1:
        # One rank: DDP would only add bucket copies and a one-rank all-reduce (≈ 3 % of a GPU step).
        import torch

        device = torch.device("cuda", 0) if acc == "gpu" else torch.device("cpu")
        strategy = ns.pl.strategies.SingleDeviceStrategy(device=device, checkpoint_io=built.checkpoint_io)
        # Named, or Lightning auto-selects SLURMEnvironment in a SLURM task (and its SIGUSR1 auto-requeue).
        plugins.append(ns.fabric.plugins.environments.LightningEnvironment())
    elif strategy is None:
        strategy = ns.pl.strategies.DDPStrategy(
            process_group_backend="nccl" if acc == "gpu" else "gloo",
            timeout=timedelta(seconds=spec.fault_tolerance.collective_timeout_s),
            cluster_environment=ns.fabric.plugins.environments.LightningEnvironment(),
            checkpoint_io=built.checkpoint_io,
            gradient_as_bucket_view=True,
        )
    else:
        strategy.checkpoint_io = built.checkpoint_io
    if fsdp.is_sharded(strategy):
        for cb in built.callbacks:
            if isinstance(cb, GradNormLogger):
                cb.sharded = True
    trainer_args: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}
    trainer_args.update(spec.trainer)
    if plugins:
        trainer_args.setdefault("plugins", plugins)
    trainer = ns.pl.Trainer(
        **trainer_args,
        accelerator=acc,
        devices=spec.resources.devices_per_node,
        num_nodes=spec.resources.nodes,
        strategy=strategy,
        logger=make(TrackingLoggerImpl, ns.pl.loggers.Logger, run_id=run_id, save_dir=str(run_dir), sink=sink,
                    tracking_uri=spec.tracking.uri or ""),  # submit resolved it into the spec
        callbacks=built.callbacks,
        enable_checkpointing=True,
        default_root_dir=str(run_dir),
        log_every_n_steps=spec.tracking.log_every_n_steps,
        use_distributed_sampler=True,
    )
    speedups.install(ns, trainer, built)
    return trainer, built
