"""The timed variants, each run in a process of its own: the raw PyTorch loop, trainctl's worker path (the
worker's own fit seam, trainctl.worker.fit), and a plain Lightning Trainer as a reference."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.flagship.timing import StepTimer, SyncCounter, cprofile_hook


def spec_for(args: argparse.Namespace) -> Any:
    from trainctl.spec import load_spec

    cuda = args.device == "cuda"
    sets = [
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        f"resources.accelerator={'gpu' if cuda else 'cpu'}",
        "resources.devices_per_node=1",
        "resources.nodes=1",
        f"model.init_args.compile={'true' if args.compile else 'false'}",
    ]
    if args.batch:
        sets.append(f"data.init_args.batch_size={args.batch}")
    if args.compile_mode:
        sets.append(f"model.init_args.compile_mode={args.compile_mode}")
    if args.attention and args.attention != "probe":
        sets.append(f"model.init_args.attention={args.attention}")
    if args.log_every_n_steps:
        sets.append(f"tracking.log_every_n_steps={args.log_every_n_steps}")
    sets += args.set or []
    return load_spec(args.spec, sets, check_classes=False)  # jsonargparse is not needed for this

def autocast(precision: Any, device: Any) -> Any:
    import torch

    p = str(precision)
    if p in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if p in ("32-true", "32", "None"):
        return contextlib.nullcontext()
    raise SystemExit(f"precision {precision!r}: the raw loop supports bf16-mixed and 32-true only")


def build_objects(spec: Any) -> tuple[Any, Any, Any]:
    from trainctl.components import namespace_of
    from trainctl.examples.gpt import GPT, TextDataModule
    from trainctl.spec import resolve_env

    ns = namespace_of(GPT)
    if spec.seed_everything is not None:
        ns.pl.seed_everything(spec.seed_everything, workers=True, verbose=False)
    model = GPT(**resolve_env(spec.model.init_args))
    data = TextDataModule(**resolve_env(spec.data.init_args))
    return ns, model, data


def raw_loop(args: argparse.Namespace, spec: Any) -> tuple[Any, Callable[[], Any]]:
    """The plain PyTorch loop on the spec's objects: the model, and a function that trains on one batch and returns
    its loss (the loader's iterator starts at the first call)."""
    import torch

    from trainctl.examples.gpt import attention_context

    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    _, model, data = build_objects(spec)
    model.to(device)
    data.setup("fit")
    loader = data.train_dataloader()
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    amp = autocast(spec.trainer.get("precision", "32-true"), device)
    batches: list[Any] = []

    def step() -> Any:
        if not batches:
            batches.append(iter(loader))
        x, y = next(batches[0])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp, attention_context(model.hparams.attention):
            loss = model.model(x, y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def run_raw(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    cuda = args.device == "cuda"
    model, step = raw_loop(args, spec)
    total = args.warmup + args.steps
    clock = StepTimer(cuda, args.warmup, total)
    counter = SyncCounter(cuda, args.steps).install() if args.count_syncs else None
    if counter:
        clock.hooks.append(counter.hook)
    if (cp := cprofile_hook(args, "raw")) is not None:
        clock.hooks.append(cp)
    loss = None
    for i in range(total):
        loss = step()
        clock.step_end(i)
    out = clock.result()
    out.update(final_loss=float(loss.detach().float().cpu()), strategy="none (plain loop)")
    if counter:
        out.update(counter.result())
    out["fpt"] = model.flops_per_token
    return out


def run_trainctl(args: argparse.Namespace, spec: Any, variant: str) -> dict[str, Any]:
    """The worker's own fit seam at world size 1, tracking off, on the objects `build_objects` made."""
    import torch

    from trainctl.worker.fit import Fit, fit
    from trainctl.worker.watchdog import Watchdog

    cuda = args.device == "cuda"
    ddp = variant in ("trainctl_ddp_async", "trainctl_ddp_nosplit")
    if variant == "trainctl_ddp_nosplit":  # dynamo's DDPOptimizer off: one graph, as without DDP
        import torch._dynamo

        torch._dynamo.config.optimize_ddp = False
    hooks = variant == "trainctl_hooks"
    if hooks:
        spec.trainer["profiler"] = "simple"
    ns, model, data = build_objects(spec)
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and shutil.disk_usage(shm).free > 8 << 30  # the epoch-end resume checkpoint: ~1.5 GB
    run_dir = Path(tempfile.mkdtemp(prefix="trainctl-bench-", dir=shm if roomy else None))
    total = args.warmup + args.steps
    clock = StepTimer(cuda, args.warmup, total)
    counter = SyncCounter(cuda, args.steps).install() if (args.count_syncs or hooks) else None
    if counter:
        clock.hooks.append(counter.hook)
    if (cp := cprofile_hook(args, variant)) is not None:
        clock.hooks.append(cp)
    last: dict[str, Any] = {}

    class Timer(ns.pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            last["loss"] = outputs["loss"] if isinstance(outputs, dict) else outputs
            clock.step_end(trainer.global_step - 1)

    fitting: dict[str, Fit] = {}

    def started(f: Fit) -> None:
        fitting["fit"] = f
        f.trainer.callbacks.append(Timer())  # last: its mark follows every other batch-end hook

    # the worker picks a single-device strategy at world size 1; the ddp variants force DDP to isolate its cost
    strategy = ns.pl.strategies.DDPStrategy(process_group_backend="nccl" if cuda else "gloo") if ddp else None
    watchdog = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", 0, 1,
                        on_stall=lambda why: None).start()
    teardown_error = None
    try:
        fit(spec, run_dir, "bench", None, 0, 1, watchdog=watchdog, strategy=strategy, objects=(model, data),
            started=started)
    finally:
        try:
            if "fit" in fitting:
                fitting["fit"].built.checkpoint_io.teardown()
        except Exception as exc:  # a failed background write must not lose the timings
            teardown_error = f"{type(exc).__name__}: {exc}"[:300]
        watchdog.stop()
        shutil.rmtree(run_dir, ignore_errors=True)  # the epoch-end resume checkpoint (GPT-2: ~1.5 GB)
    trainer, built = fitting["fit"].trainer, fitting["fit"].built
    out = clock.result()
    if teardown_error:
        out["checkpoint_error"] = teardown_error
    out["final_loss"] = float(last["loss"].detach().float().cpu())
    out["strategy"] = type(trainer.strategy).__name__
    out["callbacks"] = [type(c).__name__ for c in trainer.callbacks]
    if built.checkpoint_io.blocked_s:
        out["checkpoint_blocked_s"] = built.checkpoint_io.blocked_s
    if counter:
        out.update(counter.result())
    if hooks:
        out["hooks_ms_per_step"] = _hook_table(trainer.profiler, args.steps)
    out["fpt"] = model.flops_per_token
    return out


def _hook_table(profiler: Any, steps: int) -> dict[str, float]:
    """Mean host milliseconds per training step of each profiled action that runs once per step or more."""
    rows = {}
    for action, durations in profiler.recorded_durations.items():
        if len(durations) < steps:
            continue
        tail = durations[-steps:]
        rows[action] = 1e3 * sum(tail) / steps
    return dict(sorted(rows.items(), key=lambda kv: -kv[1])[:30])


def run_lightning(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    ns, model, data = build_objects(spec)
    cuda = args.device == "cuda"
    total = args.warmup + args.steps
    clock = StepTimer(cuda, args.warmup, total)
    last: dict[str, Any] = {}

    class Timer(ns.pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            last["loss"] = outputs["loss"]
            clock.step_end(trainer.global_step - 1)

    tr = ns.pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, strategy="auto",
                       precision=spec.trainer.get("precision", "32-true"), max_steps=total, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Timer()])
    tr.fit(model, datamodule=data)
    out = clock.result()
    out.update(final_loss=float(last["loss"].detach().float().cpu()), strategy=type(tr.strategy).__name__,
               fpt=model.flops_per_token)
    return out
