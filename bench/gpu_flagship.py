#!/usr/bin/env python3
"""Flagship benchmark: trainctl's worker path against a raw PyTorch loop, same model, same batches, one device.

    python bench/gpu_flagship.py --device cuda --out bench/results/gpu_flagship.json      # one GPU
    PYTHONPATH=src python3 bench/gpu_flagship.py --device cuda ...      # a GPU machine without trainctl installed
    python bench/gpu_flagship.py --smoke --device cpu --out /tmp/flagship.json           # CPU smoke (tests)

Workload: `jobs/gpt-small.yaml` (GPT-2-124M shape, bf16, fused AdamW, SDPA attention, optional torch.compile;
`jobs/gpt-smoke.yaml` with --smoke), read with trainctl's own spec loader and overridden for the benchmark
(batch, steps, compile, one device, no validation). Every variant runs in its own process (a fresh CUDA
context and allocator; inductor's on-disk cache is shared, so only the first compile of a graph is cold):

  raw             plain PyTorch: the same network, AdamW + LambdaLR from the module's configure_optimizers,
                  the same DataModule loader (so the same batches in the same order), autocast as the spec's
                  precision, loss.backward(), opt.step(), sched.step(), opt.zero_grad(set_to_none=True).
  trainctl        the worker's path as `train()` runs it with tracking off: seed_everything, the module and
                  data module, `trainctl.worker.build.build_trainer(ns, spec, run_dir, run_id, sink=None)`
                  (single-device strategy at world size 1, trainctl's callbacks, its TrackingLogger, step
                  metrics copied to the host behind CUDA events — worker/fast_path.py), its resumable data path
                  and watchdog, `trainer.fit`.
  trainctl_fast   alias of `trainctl` (the fast path this benchmark prototyped now lives in the worker).
  trainctl_ddp_async  trainctl with a DDP strategy forced at world size 1: isolates DDP's own cost.
  trainctl_ddp_nosplit  trainctl_ddp_async with dynamo's DDPOptimizer off (`optimize_ddp=False`): one compiled
                  graph instead of one per gradient bucket, so it separates the graph split from DDP's reducer.
  trainctl_hooks  diagnostic, not timed for the table: trainctl's path under Lightning's SimpleProfiler with
                  every host sync (`.item()`, `.tolist()`, `bool(t)`, ...) counted by call site.
  lightning       reference: a plain Trainer as in the anchor (strategy auto, no logger, no checkpointing).
  profile         diagnostic: the raw loop under torch.profiler, GPU time per step by kernel family.
  probe_attention diagnostic: SDPA forward+backward per backend at the flagship's shape (picks --attention probe).

Timing: a CUDA event is recorded at the end of every step (no sync inside the timed window, so a loop whose
host keeps ahead of the GPU is not charged for its host time); the step time is the median interval between
consecutive step ends after the warm-up (CPU: host clock). tokens/s = batch·block / step; MFU = tokens/s ·
(6N + 12·L·D·T) / peak, with the bf16 dense peak picked by device name (H100/H200: 989 TFLOP/s). The
wall-clock mean over the timed window (synchronized at both ends) is reported beside it.
Needs only torch and (pytorch_)lightning on the GPU machine: no mlflow, submitit, ray or jsonargparse.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

TIMED = ("raw", "trainctl", "trainctl_fast", "trainctl_ddp_async", "trainctl_ddp_nosplit", "lightning")
DIAGNOSTIC = ("trainctl_hooks", "profile", "probe_attention")
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def peak_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16.items():
        if key in device_name:
            return peak
    return None


# ======================================================================== child side: one variant, one process


def _spec(args: argparse.Namespace) -> Any:
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


class StepClock:
    """Step-end marks: CUDA events (no sync) or host times; a sync only at the two ends of the timed window."""

    def __init__(self, cuda: bool, warmup: int, total: int) -> None:
        import torch

        self.torch, self.cuda, self.warmup, self.total = torch, cuda, warmup, total
        self.marks: list[Any] = []
        self.cpu_marks: list[float] = []  # this thread's CPU time at each step end
        self.t0 = self.t1 = None
        self.first_step_s: float | None = None
        self.started = time.perf_counter()
        self.hooks: list[Any] = []  # called as hook(phase) with phase "start" / "stop" of the timed window

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def step_end(self, i: int) -> None:
        self.cpu_marks.append(time.thread_time())
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
        if i == 0:
            self._sync()
            self.first_step_s = time.perf_counter() - self.started
        if i == self.warmup - 1:
            self._sync()
            self.t0 = time.perf_counter()
            for h in self.hooks:
                h("start")
        if i == self.total - 1:
            for h in self.hooks:
                h("stop")
            self._sync()
            self.t1 = time.perf_counter()

    def result(self) -> dict[str, Any]:
        marks = self.marks[self.warmup - 1 : self.total]
        if self.cuda:
            iv = [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(marks)]
        else:
            iv = [b - a for a, b in itertools.pairwise(marks)]
        if not iv or self.t0 is None or self.t1 is None:
            raise RuntimeError(f"only {len(self.marks)} step ends recorded (need {self.total})")
        cpu = self.cpu_marks[self.warmup - 1 : self.total]
        cpu_iv = [b - a for a, b in itertools.pairwise(cpu)]
        return {
            # host CPU of the training thread per step: on a CPU device the whole step; on a GPU the launches,
            # hooks and Python, plus any time spent spinning in a sync
            "host_cpu_ms_per_step": 1e3 * statistics.median(cpu_iv),
            "step_s_median": statistics.median(iv), "step_s_mean": statistics.fmean(iv),
            "step_s_min": min(iv), "step_s_max": max(iv), "wall_step_s": (self.t1 - self.t0) / len(iv),
            "timed_steps": len(iv), "first_step_s": self.first_step_s,
        }


class SyncCounter:
    """Counts host syncs by call site while active. On a GPU: CUDA's own detector
    (`torch.cuda.set_sync_debug_mode("warn")`), which sees every synchronizing call. On a CPU, where nothing
    syncs: every Tensor.item/tolist/bool/float/int, the calls that would sync on a GPU."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, cuda: bool, steps: int) -> None:
        self.cuda, self.steps = cuda, steps
        self.active = False
        self.sites: collections.Counter[str] = collections.Counter()
        self.originals: dict[str, Any] = {}

    @staticmethod
    def _site() -> str:
        import traceback as tb

        frames = tb.extract_stack()[:-3]
        inside = ("site-packages/torch/", "dist-packages/torch/", "gpu_flagship", "/warnings.py")
        keep = [f for f in frames if not any(p in f.filename.replace(os.sep, "/") for p in inside)]
        if not keep:
            return "?"
        f = keep[-1]
        parts = Path(f.filename).parts
        short = "/".join(parts[-3:])
        return f"{short}:{f.lineno} {f.name}"

    def install(self) -> SyncCounter:
        import torch

        for name in () if self.cuda else self.NAMES:
            orig = getattr(torch.Tensor, name)
            self.originals[name] = orig

            def wrapper(t: Any, *a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
                if self.active:
                    self.sites[f"{_name}: {self._site()}"] += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, wrapper)
        if self.cuda:
            import warnings

            def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
                     ) -> None:
                if self.active and "synchroniz" in str(message):
                    self.sites[f"cuda-sync: {self._site()}"] += 1

            warnings.showwarning = show
            warnings.simplefilter("always")
        return self

    def hook(self, phase: str) -> None:
        import torch

        self.active = phase == "start"
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn" if self.active else 0)

    def result(self) -> dict[str, Any]:
        return {"syncs_per_step": sum(self.sites.values()) / max(1, self.steps),
                "sync_sites": {k: v / max(1, self.steps) for k, v in self.sites.most_common(20)}}


def _cprofile_hook(args: argparse.Namespace, variant: str) -> Any:
    """A StepClock hook that runs the timed window under cProfile, timed by this thread's CPU time."""
    if not args.cprofile:
        return None
    import cProfile

    prof = cProfile.Profile(time.thread_time)
    folder = Path(args.cprofile)
    folder.mkdir(parents=True, exist_ok=True)

    def hook(phase: str) -> None:
        if phase == "start":
            prof.enable()
        else:
            prof.disable()
            prof.dump_stats(str(folder / f"{variant}.pstats"))

    return hook


def _autocast(precision: Any, device: Any) -> Any:
    import torch

    p = str(precision)
    if p in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if p in ("32-true", "32", "None"):
        return contextlib.nullcontext()
    raise SystemExit(f"precision {precision!r}: the raw loop supports bf16-mixed and 32-true only")


def _build_objects(spec: Any) -> tuple[Any, Any, Any]:
    from trainctl.components import namespace_of
    from trainctl.examples.gpt import GPT, TextDataModule
    from trainctl.spec import resolve_env

    ns = namespace_of(GPT)
    if spec.seed_everything is not None:
        ns.pl.seed_everything(spec.seed_everything, workers=True, verbose=False)
    model = GPT(**resolve_env(spec.model.init_args))
    data = TextDataModule(**resolve_env(spec.data.init_args))
    return ns, model, data


def run_raw(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    import torch

    from trainctl.examples.gpt import attention_context

    cuda = args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    _, model, data = _build_objects(spec)
    model.to(device)
    data.setup("fit")
    loader = data.train_dataloader()
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    net = model.model
    total = args.warmup + args.steps
    clock = StepClock(cuda, args.warmup, total)
    counter = SyncCounter(cuda, args.steps).install() if args.count_syncs else None
    if counter:
        clock.hooks.append(counter.hook)
    if (cp := _cprofile_hook(args, "raw")) is not None:
        clock.hooks.append(cp)
    amp = _autocast(spec.trainer.get("precision", "32-true"), device)
    it = iter(loader)
    loss = None
    for i in range(total):
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp, attention_context(model.hparams.attention):
            loss = net(x, y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        clock.step_end(i)
    out = clock.result()
    out.update(final_loss=float(loss.detach().float().cpu()), strategy="none (plain loop)")
    if counter:
        out.update(counter.result())
    out["fpt"] = model.flops_per_token
    return out


def run_trainctl(args: argparse.Namespace, spec: Any, variant: str) -> dict[str, Any]:
    import inspect

    import torch

    from trainctl.worker.build import build_trainer

    cuda = args.device == "cuda"
    ddp = variant in ("trainctl_ddp_async", "trainctl_ddp_nosplit")
    if variant == "trainctl_ddp_nosplit":  # dynamo's DDPOptimizer off: one graph, as without DDP
        import torch._dynamo

        torch._dynamo.config.optimize_ddp = False
    hooks = variant == "trainctl_hooks"
    if hooks:
        spec.trainer["profiler"] = "simple"
    ns, model, data = _build_objects(spec)
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and shutil.disk_usage(shm).free > 8 << 30  # the epoch-end resume checkpoint: ~1.5 GB
    run_dir = Path(tempfile.mkdtemp(prefix="trainctl-bench-", dir=shm if roomy else None))
    total = args.warmup + args.steps
    clock = StepClock(cuda, args.warmup, total)
    counter = SyncCounter(cuda, args.steps).install() if (args.count_syncs or hooks) else None
    if counter:
        clock.hooks.append(counter.hook)
    if (cp := _cprofile_hook(args, variant)) is not None:
        clock.hooks.append(cp)
    last: dict[str, Any] = {}

    class Timer(ns.pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            last["loss"] = outputs["loss"] if isinstance(outputs, dict) else outputs
            clock.step_end(trainer.global_step - 1)

    extra: list[Any] = []
    watchdog = None
    kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):  # the worker adds a heartbeat callback and a watchdog thread
        from trainctl.callbacks.binding import make
        from trainctl.worker.watchdog import HeartbeatImpl, Watchdog

        watchdog = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", 0, 1,
                            on_stall=lambda why: None).start()
        extra.append(make(HeartbeatImpl, ns.pl.Callback, watchdog))
    if extra and "extra_callbacks" in inspect.signature(build_trainer).parameters:
        kwargs["extra_callbacks"] = tuple(extra)
    if ddp:  # the worker picks a single-device strategy at world size 1; force DDP to isolate its cost
        kwargs["strategy"] = ns.pl.strategies.DDPStrategy(process_group_backend="nccl" if cuda else "gloo")
    trainer, built = build_trainer(ns, spec, run_dir, "bench", None, **kwargs)
    trainer.callbacks.append(Timer())  # last: its mark follows every other batch-end hook
    with contextlib.suppress(ImportError):  # the worker's resumable data path, where this checkout has it
        from trainctl.worker.data import ResumableData

        ResumableData(ns, trainer, spec.seed_everything or 0, 0, 1).install(data)
    teardown_error = None
    try:
        trainer.fit(model, datamodule=data)
    finally:
        try:
            built.checkpoint_io.teardown()
        except Exception as exc:  # a failed background write must not lose the timings
            teardown_error = f"{type(exc).__name__}: {exc}"[:300]
        if watchdog is not None:
            watchdog.stop()
        shutil.rmtree(run_dir, ignore_errors=True)  # the epoch-end resume checkpoint (GPT-2: ~1.5 GB)
    out = clock.result()
    if teardown_error:
        out["checkpoint_error"] = teardown_error
    out["final_loss"] = float(last["loss"].detach().float().cpu())
    out["strategy"] = type(trainer.strategy).__name__
    out["callbacks"] = [type(c).__name__ for c in trainer.callbacks]
    blocked = getattr(built.checkpoint_io, "blocked_s", [])
    if blocked:
        out["checkpoint_blocked_s"] = blocked
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
    ns, model, data = _build_objects(spec)
    cuda = args.device == "cuda"
    total = args.warmup + args.steps
    clock = StepClock(cuda, args.warmup, total)
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


def run_profile(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The raw loop under torch.profiler for a few steps: GPU (or CPU) time per step by kernel family."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainctl.examples.gpt import attention_context

    cuda = args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    _, model, data = _build_objects(spec)
    model.to(device)
    data.setup("fit")
    it = iter(data.train_dataloader())
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    amp = _autocast(spec.trainer.get("precision", "32-true"), device)
    n_prof = 3

    def step() -> None:
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp, attention_context(model.hparams.attention):
            loss = model.model(x, y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(max(2, args.warmup)):
        step()
    if cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n_prof):
            step()
        if cuda:
            torch.cuda.synchronize()
    families: collections.Counter[str] = collections.Counter()
    kernels: collections.Counter[str] = collections.Counter()
    for ev in prof.key_averages():
        t_us = getattr(ev, "self_device_time_total", None) if cuda else ev.self_cpu_time_total
        if cuda and t_us is None:
            t_us = getattr(ev, "self_cuda_time_total", 0)
        if not t_us or (cuda and ev.device_type != torch.autograd.DeviceType.CUDA):
            continue
        if "#" in ev.key or ev.key.startswith(("Optimizer.", "ProfilerStep")):  # GPU-track annotations, not kernels
            continue
        families[_family(ev.key)] += t_us / 1e3 / n_prof
        kernels[ev.key[:110]] += t_us / 1e3 / n_prof
    table = ""
    for key in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
            break
        except Exception as exc:  # sort keys were renamed across PyTorch versions
            table = f"table by {key} failed: {exc}"
    if args.profile_table:
        Path(args.profile_table).write_text(table)
    return {"device_ms_per_step_by_family": dict(families.most_common()),
            "device_ms_per_step_total": sum(families.values()),
            "top_kernels_ms_per_step": dict(kernels.most_common(25)), "fpt": model.flops_per_token}


def _family(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "cudnn", "attention", "sdpa", "_attn")):
        return "attention"
    if any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "aten::mm", "addmm", "bmm")):
        return "matmul"
    if "adam" in n:
        return "optimizer"
    if "lpnorm" in n or "norm_kernel" in n:
        return "grad norm (foreach)"
    if "multi_tensor" in n:
        return "foreach (other)"
    if "nccl" in n:
        return "nccl"
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset"
    if n.startswith(("triton_per_", "triton_red_")):
        return "triton reductions (layernorm, softmax/CE, ...)"
    if n.startswith("triton_poi_"):
        return "triton pointwise"
    if "triton" in n:
        return "triton (other)"
    if any(s in n for s in ("embedding", "index", "scatter", "sort", "radix", "segment", "partials")):
        return "embedding / index"
    if "elementwise" in n or "reduce_kernel" in n:
        return "aten elementwise/reduce"
    return "other"


def run_probe_attention(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """Forward+backward of causal SDPA per backend at the flagship's shape; picks the fastest that matches flash."""
    import torch


    h = spec.model.init_args
    b = args.batch or spec.data.init_args.get("batch_size", 16)
    n_head, n_embd, t = h.get("n_head", 12), h.get("n_embd", 768), h.get("block_size", 1024)
    device = "cuda" if args.device == "cuda" else "cpu"
    dtype = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, n_head, t, n_embd // n_head, device=device, dtype=dtype, generator=g,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn(b, n_head, t, n_embd // n_head, device=device, dtype=dtype, generator=g)
    results: dict[str, Any] = {}
    ref = ref_grad = None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for name in ("flash", "cudnn", "efficient"):
        try:
            with sdpa_kernel([backends[name]]):  # this kernel only: an unsupported one fails, not falls back

                def fb() -> torch.Tensor:
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    out.backward(grad)
                    return out

                q.grad = k.grad = v.grad = None
                out = fb().float().detach()
                qg = q.grad.float().clone()
                for _ in range(3):
                    fb()
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                reps = 20
                for _ in range(reps):
                    fb()
                if device == "cuda":
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / reps * 1e3
            if ref is None:
                ref, ref_grad = out, qg
            err = float((out - ref).norm() / ref.norm())
            gerr = float((qg - ref_grad).norm() / ref_grad.norm())
            results[name] = {"fwd_bwd_ms": ms, "rel_err_vs_flash": err, "grad_rel_err_vs_flash": gerr,
                             "ok": bool(err < 2e-2 and gerr < 5e-2 and torch.isfinite(qg).all())}
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300], "ok": False}
    if device == "cuda":  # what the card's matrix units give at the model's own GEMM shapes (bf16)
        m = b * t
        shapes = {"8192^3": (8192, 8192, 8192), "qkv": (m, n_embd, 3 * n_embd), "fc": (m, n_embd, 4 * n_embd),
                  "out": (m, 4 * n_embd, n_embd), "head": (m, n_embd, h.get("vocab_size", 50304))}
        rates = {}
        for key, (mm, kk, nn) in shapes.items():
            a_ = torch.randn(mm, kk, device=device, dtype=dtype, generator=g)
            b_ = torch.randn(kk, nn, device=device, dtype=dtype, generator=g)
            for _ in range(3):
                a_ @ b_
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                a_ @ b_
            torch.cuda.synchronize()
            rates[key] = 2 * mm * kk * nn * 10 / (time.perf_counter() - t0) / 1e12
            del a_, b_
        results["gemm_tflops"] = rates
    ok = {n: r["fwd_bwd_ms"] for n, r in results.items() if r.get("ok") and n in ("flash", "cudnn")}
    results["choice"] = min(ok, key=ok.get) if ok else "auto"
    return results


def child_main(args: argparse.Namespace) -> int:
    import torch

    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, args.threads or min(4, os.cpu_count() or 1)))
    spec = _spec(args)
    t0 = time.perf_counter()
    v = args.child
    if v == "raw":
        out = run_raw(args, spec)
    elif v.startswith("trainctl"):
        out = run_trainctl(args, spec, v)
    elif v == "lightning":
        out = run_lightning(args, spec)
    elif v == "profile":
        out = run_profile(args, spec)
    elif v == "probe_attention":
        out = run_probe_attention(args, spec)
    else:
        raise SystemExit(f"unknown variant {v!r}")
    h = spec.model.init_args
    batch = int(spec.data.init_args.get("batch_size", 16))
    block = int(h.get("block_size", 1024))
    out.update(variant=v, child_s=time.perf_counter() - t0, batch=batch, block_size=block,
               device_name=torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
               torch=torch.__version__, compile=bool(h.get("compile")), compile_mode=h.get("compile_mode"),
               attention=h.get("attention", "auto"), precision=str(spec.trainer.get("precision", "32-true")),
               log_every_n_steps=spec.tracking.log_every_n_steps, log_grad_norm=spec.tracking.log_grad_norm)
    if cuda:
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if "step_s_median" in out:
        tokens = batch * block
        out["tokens_per_step"] = tokens
        out["tokens_per_s"] = tokens / out["step_s_median"]
        out["tokens_per_s_wall"] = tokens / out["wall_step_s"]
        peak = peak_flops(out["device_name"]) if cuda else None
        out["peak_flops"] = peak
        out["mfu"] = out["tokens_per_s"] * out["fpt"] / peak if peak else None
        out["mfu_wall"] = out["tokens_per_s_wall"] * out["fpt"] / peak if peak else None
    Path(args.child_out).write_text(json.dumps(out, default=str))
    return 0


# ======================================================================== parent side: run, compare, report


def parse_variant(spec: str) -> tuple[str, str | None, int | None]:
    """`name[@attention][:bBATCH]`, e.g. `raw@cudnn:b16`: a variant with its own attention backend or batch."""
    rest, _, b = spec.partition(":b")
    name, _, attention = rest.partition("@")
    if name not in TIMED + DIAGNOSTIC:
        raise SystemExit(f"unknown variant {name!r} in {spec!r}; choose from {', '.join(TIMED + DIAGNOSTIC)}")
    if attention and attention not in ("auto", "flash", "cudnn", "efficient", "math", "probe"):
        raise SystemExit(f"unknown attention {attention!r} in {spec!r}")
    return name, attention or None, int(b) if b else None


def _child_cmd(args: argparse.Namespace, variant: str, out_path: str, attention: str | None,
               batch: int | None = None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--child-out", out_path,
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup), "--spec", args.spec]
    cmd.append("--compile" if args.compile else "--no-compile")
    for flag, value in (("--batch", batch or args.batch), ("--compile-mode", args.compile_mode),
                        ("--attention", attention),
                        ("--threads", args.threads), ("--log-every-n-steps", args.log_every_n_steps),
                        ("--profile-table", args.profile_table)):
        if value:
            cmd += [flag, str(value)]
    for s in args.set or []:
        cmd += ["--set", s]
    if args.count_syncs:
        cmd.append("--count-syncs")
    if args.cprofile:
        cmd += ["--cprofile", args.cprofile]
    return cmd


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per label; each label's ratio is against the raw loop with the same attention and batch."""
    by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in runs:
        if "tokens_per_s" in r:
            by[r["label"]].append(r)
    med = {k: statistics.median(r["tokens_per_s"] for r in rs) for k, rs in by.items()}
    med_wall = {k: statistics.median(r["tokens_per_s_wall"] for r in rs) for k, rs in by.items()}
    summary: dict[str, Any] = {}
    for label, rs in by.items():
        base = next((k for k, r in by.items() if r[0]["variant"] == "raw" and r[0]["attention"] == rs[0]["attention"]
                     and r[0]["batch"] == rs[0]["batch"]), None)
        tps, wall = med[label], med_wall[label]
        fpt, peak = rs[0]["fpt"], rs[0].get("peak_flops")
        summary[label] = {
            "variant": rs[0]["variant"], "attention": rs[0]["attention"], "batch": rs[0]["batch"],
            "runs": len(rs), "tokens_per_s": tps, "tokens_per_s_each": [r["tokens_per_s"] for r in rs],
            "step_ms": 1e3 * rs[0]["tokens_per_step"] / tps, "tokens_per_s_wall": wall,
            "mfu": tps * fpt / peak if peak else None, "mfu_wall": wall * fpt / peak if peak else None,
            "baseline": base,
            "ratio_vs_raw": tps / med[base] if base else None,
            "ratio_vs_raw_wall": wall / med_wall[base] if base else None,
            "final_loss": [r.get("final_loss") for r in rs], "strategy": rs[0].get("strategy"),
            "peak_mem_gib": rs[0].get("peak_mem_gib"), "first_step_s": [r.get("first_step_s") for r in rs],
        }
    return summary


def _table(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"device: {meta.get('device_name')}  torch {meta.get('torch')}  batch {meta.get('batch')} x "
             f"{meta.get('block_size')} tokens  compile={meta.get('compile')} mode={meta.get('compile_mode')}  "
             f"attention={meta.get('attention')}  precision={meta.get('precision')}",
             f"{'variant':<26} {'step ms':>8} {'tokens/s':>11} {'MFU':>7} {'ratio':>7} {'wall tok/s':>11} "
             f"{'wall ratio':>10}  strategy"]
    order = sorted(summary, key=lambda k: (summary[k]["batch"], str(summary[k]["attention"]),
                                           TIMED.index(summary[k]["variant"])))
    for v in order:
        s = summary[v]
        mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] else "-"
        ratio = f"{s['ratio_vs_raw']:.3f}" if s["ratio_vs_raw"] else "-"
        wr = f"{s['ratio_vs_raw_wall']:.3f}" if s["ratio_vs_raw_wall"] else "-"
        lines.append(f"{v:<26} {s['step_ms']:8.2f} {s['tokens_per_s']:11.0f} {mfu:>7} {ratio:>7} "
                     f"{s['tokens_per_s_wall']:11.0f} {wr:>10}  {s['strategy']}")
    return "\n".join(lines)


def parent_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else out_path.with_suffix(".log")
    chosen = "auto"  # what `probe` means until probe_attention has run
    runs: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    warm: list[float] = []  # durations of runs after the first few (compiles mostly cached)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    needs_probe = args.attention == "probe" or any(parse_variant(v)[1] == "probe" for v in variants)
    if needs_probe and args.device == "cuda" and "probe_attention" not in variants:
        variants = ["probe_attention", *variants]
    from trainctl.spec import load_spec

    base = load_spec(args.spec, args.set or [], check_classes=False)
    base_attention = base.model.init_args.get("attention", "auto")
    if args.attention and args.attention != "probe":
        base_attention = args.attention
    base_batch = args.batch or int(base.data.init_args.get("batch_size", 16))
    meta: dict[str, Any] = {}

    def write_report() -> dict[str, Any]:
        """Rewritten after every variant: a run cut short by an outer timeout still leaves its figures."""
        summary = _summarize(runs)
        report = {"config": {**meta, "steps": args.steps, "warmup": args.warmup, "spec": args.spec,
                             "overrides": args.set or [], "variants": variants, "attention_probe_choice": chosen},
                  "summary": summary, "runs": runs, "diagnostics": diagnostics, "errors": errors,
                  "total_s": time.monotonic() - started}
        out_path.write_text(json.dumps(report, indent=2, default=str))
        return summary

    with open(log_path, "a") as log:
        for i, spec in enumerate(variants):
            v, attention, batch = parse_variant(spec)
            attention = attention or args.attention
            if attention == "probe":
                attention = chosen
            # labels name the effective configuration: the same one run twice pools under one label
            label = v + (f"@{attention}" if attention and attention != base_attention else "") + \
                (f":b{batch}" if batch and batch != base_batch else "")
            left = args.budget_s - (time.monotonic() - started) if args.budget_s else None
            need = (statistics.median(warm) if warm else 45.0) + 10.0
            if left is not None and i >= args.must_run and left < need:
                errors.append({"variant": label, "skipped": f"time budget: {left:.0f} s left, ~{need:.0f} s needed"})
                print(f"[flagship] skip {label}: {left:.0f} s left of the budget", flush=True)
                continue
            fd, child_out = tempfile.mkstemp(suffix=".json")
            os.close(fd)
            cmd = _child_cmd(args, v, child_out, attention, batch)
            print(f"[flagship] {label} ...", flush=True)
            log.write(f"\n===== {label}: {' '.join(cmd)}\n")
            log.flush()
            t0 = time.monotonic()
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                      timeout=None if left is None else max(left, 30.0))
                rc: Any = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            took = time.monotonic() - t0
            if i >= args.must_run and v != "probe_attention":
                warm.append(took)
            text = Path(child_out).read_text() if Path(child_out).exists() else ""
            Path(child_out).unlink(missing_ok=True)
            if rc != 0 or not text:
                errors.append({"variant": label, "rc": rc, "seconds": took})
                print(f"[flagship] {label} FAILED (rc {rc}, {took:.0f} s); see {log_path}", flush=True)
                write_report()
                continue
            res = json.loads(text)
            res["process_s"], res["label"] = took, label
            if v in TIMED:
                runs.append(res)
                meta = meta or {k: res.get(k) for k in ("device_name", "torch", "batch", "block_size", "compile",
                                                         "compile_mode", "attention", "precision")}
                print(f"[flagship] {label}: {res['tokens_per_s']:.0f} tokens/s, step {1e3 * res['step_s_median']:.2f}"
                      " ms" + (f", MFU {100 * res['mfu']:.1f}%" if res.get("mfu") else "")
                      + f" (first step {res['first_step_s']:.0f} s, process {took:.0f} s)", flush=True)
            else:
                diagnostics.setdefault(label, []).append(res)
                print(f"[flagship] {label}: done ({took:.0f} s)", flush=True)
                if v == "probe_attention":
                    chosen = res.get("choice", "auto")
                    print(f"[flagship] attention probe picks {chosen}: {json.dumps(res)}", flush=True)
            write_report()
    summary = write_report()
    print(_table(summary, meta), flush=True)
    hooks = next((d for k, d in diagnostics.items() if k.startswith("trainctl_hooks")), None)
    if hooks:
        print("trainctl per-step host time by hook (ms):", json.dumps(hooks[0].get("hooks_ms_per_step"), indent=1))
        print("host syncs per step by site:", json.dumps(hooks[0].get("sync_sites"), indent=1))
    prof = next((d for k, d in diagnostics.items() if k.startswith("profile")), None)
    if prof:
        print("device time per step by family (ms):", json.dumps(prof[0].get("device_ms_per_step_by_family"), indent=1))
    print(f"[flagship] wrote {out_path}", flush=True)
    return 0 if runs and not any("rc" in e for e in errors) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny model from jobs/gpt-smoke.yaml, a few steps")
    p.add_argument("--spec", default=None, help="job spec (default jobs/gpt-small.yaml, --smoke: jobs/gpt-smoke.yaml)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40; smoke 4)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps, compile included (default 10; smoke 2)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: the spec's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (default: on for cuda, off for cpu)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: the spec's)")
    p.add_argument("--attention", default=None, help="auto|flash|cudnn|efficient|math|probe (default: the spec's)")
    p.add_argument("--log-every-n-steps", type=int, default=None, help="override tracking.log_every_n_steps")
    p.add_argument("--set", action="append", help="extra spec override key.path=value (repeatable)")
    p.add_argument("--variants", default=None,
                   help=f"comma list from {', '.join(TIMED + DIAGNOSTIC)} (default raw,trainctl)")
    p.add_argument("--count-syncs", action="store_true", help="count host syncs by call site in timed variants")
    p.add_argument("--cprofile", default=None,
                   help="folder: each variant's timed window under cProfile (thread CPU time) -> <variant>.pstats")
    p.add_argument("--budget-s", type=float, default=None, help="skip later variants past this many seconds")
    p.add_argument("--must-run", type=int, default=3, help="variants run regardless of the budget")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (cpu device)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_flagship.json"))
    p.add_argument("--log", default=None, help="children's output (default: --out with .log)")
    p.add_argument("--profile-table", default=None, help="where the profile variant writes its kernel table")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.spec is None:
        args.spec = str(ROOT / "jobs" / ("gpt-smoke.yaml" if args.smoke else "gpt-small.yaml"))
    if args.steps is None:
        args.steps = 4 if args.smoke else 40
    if args.warmup is None:
        args.warmup = 2 if args.smoke else 10
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    if args.compile is None:
        args.compile = args.device == "cuda" and not args.smoke
    if args.variants is None:
        args.variants = "raw,trainctl"
    if args.child:
        try:
            return child_main(args)
        except Exception:
            traceback.print_exc()
            return 1
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
