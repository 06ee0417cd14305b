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
  trainctl        the worker's own fit seam, `trainctl.worker.fit.fit`, with tracking off (sink=None): the
                  module and data module, `build_trainer` (single-device strategy at world size 1, trainctl's
                  callbacks, its TrackingLogger, step metrics copied to the host behind CUDA events —
                  worker/fast_path.py), its resumable data path, heartbeat and watchdog, `trainer.fit`.
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
The parts live in bench/flagship/: timing, variants, diagnostics, protocol (parent/child), orchestrate, report.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (`python bench/gpu_flagship.py`): the bench package importable
    sys.path.insert(0, str(ROOT))

from bench.flagship.protocol import DIAGNOSTIC, TIMED  # noqa: E402


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
    from bench.flagship.orchestrate import parent_main
    from bench.flagship.protocol import child_main

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
