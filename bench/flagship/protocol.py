"""The parent/child protocol: the parent starts `bench/gpu_flagship.py --child VARIANT --child-out FILE ...` per
variant (a fresh CUDA context and allocator each); the child runs that one variant and writes one JSON object."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.flagship.timing import peak_flops

SCRIPT = Path(__file__).resolve().parents[1] / "gpu_flagship.py"
TIMED = ("raw", "trainctl", "trainctl_ddp_async", "trainctl_ddp_nosplit", "lightning")
DIAGNOSTIC = ("trainctl_hooks", "profile", "probe_attention")


def parse_variant(spec: str) -> tuple[str, str | None, int | None]:
    """`name[@attention][:bBATCH]`, e.g. `raw@cudnn:b16`: a variant with its own attention backend or batch."""
    rest, _, b = spec.partition(":b")
    name, _, attention = rest.partition("@")
    if name not in TIMED + DIAGNOSTIC:
        raise SystemExit(f"unknown variant {name!r} in {spec!r}; choose from {', '.join(TIMED + DIAGNOSTIC)}")
    if attention and attention not in ("auto", "flash", "cudnn", "efficient", "math", "probe"):
        raise SystemExit(f"unknown attention {attention!r} in {spec!r}")
    return name, attention or None, int(b) if b else None


def child_cmd(args: argparse.Namespace, variant: str, out_path: str, attention: str | None,
              batch: int | None = None) -> list[str]:
    cmd = [sys.executable, str(SCRIPT), "--child", variant, "--child-out", out_path,
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


def child_main(args: argparse.Namespace) -> int:
    import torch

    from bench.flagship.diagnostics import run_probe_attention, run_profile
    from bench.flagship.variants import run_lightning, run_raw, run_trainctl, spec_for

    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, args.threads or min(4, os.cpu_count() or 1)))
    spec = spec_for(args)
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
