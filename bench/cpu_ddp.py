"""CPU DDP overhead: trainctl-launched step time ÷ a hand-written torch.distributed DDP loop, 2 gloo ranks.

    python -m bench.cpu_ddp [--quick] [--reps 5 --max-reps 15 --target 0.015] [--out bench/results/cpu_ddp.json]
    python -m bench.cpu_ddp --profile [--hidden 64 --batch 32]     # where trainctl's per-step time goes

Variants (each a fresh pair of processes, alternated in rounds A B …, … B A until every ratio is known to ±target,
bench/alternate.py; a ratio is the median of the rounds' paired ratios, its `spread` beside it):
  raw       a hand-written DDP loop: DistributedSampler + DataLoader, DistributedDataParallel, Adam,
            zero_grad(set_to_none=True), backward, step — the anchor's raw loop.
  trainctl  `trainctl submit` of a spec naming bench.workload.BenchMLP/BenchDigits on the local backend (submitit,
            2 ranks, tracking to the embedded store, every trainctl callback, logging every step), with
            bench.workload.StepEnds in the spec's `callbacks:` recording rank 0's step ends.
  anchor    the CPU DDP anchor script's raw loop, unchanged (bench/anchors/cpu_ddp_anchor.py, a verbatim copy):
            checks that `raw` is a fair baseline (±10 %).
  lightning the anchor's plain Lightning Trainer (reference only).
  worker    diagnostic: trainctl's worker path (build_trainer + its callbacks, data path, watchdog) in two
            processes started here, with hook timers or cProfile on rank 0 (--profile).
Step time: median interval between consecutive step ends after a warm-up epoch (rank 0's clock).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.alternate import alternate
from bench.procs import ROOT, free_port, python_env, run_json
from bench.stats import intervals_after_warmup, median
from bench.worker_path import worker
from bench.workload import bench_spec

ANCHOR = ROOT / "bench" / "anchors" / "cpu_ddp_anchor.py"
WORKLOADS = {"tiny": (64, 32), "wide": (1024, 256)}


# ======================================================================== the raw loop (child)


def _raw_rank(rank: int, port: int, hidden: int, batch: int, epochs: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from bench.stats import peak_rss_mb
    from bench.workload import digits, mlp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    ds = digits()
    sampler = torch.utils.data.distributed.DistributedSampler(ds, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler)
    model = nn.parallel.DistributedDataParallel(mlp(hidden))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ends: list[float] = []
    first = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ends.append(time.perf_counter())
        if epoch == 0:
            first = len(ends)
    if rank == 0:
        ts = intervals_after_warmup(ends, first)
        Path(out).write_text(json.dumps({"step_s": median(ts), "steps": len(ts), "intervals": ts,
                                         "max_rss_mb": peak_rss_mb(), "final_loss": loss.item()}))
    else:
        Path(f"{out}.rank{rank}").write_text(json.dumps({"max_rss_mb": peak_rss_mb()}))
    dist.barrier()
    # No teardown: freeing DDP's reducer can deadlock in ProcessGroupGloo's destructor (torch 2.13; see
    # bench.procs.run_json). Both ranks' results are written.
    sys.stdout.flush()
    os._exit(0)


def run_raw(hidden: int, batch: int, epochs: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "raw.json")
        mp.start_processes(_raw_rank, args=(free_port(), hidden, batch, epochs, out), nprocs=2, start_method="fork")
        result = json.loads(Path(out).read_text())
        result["max_rss_mb_ranks"] = [result["max_rss_mb"], json.loads(Path(f"{out}.rank1").read_text())["max_rss_mb"]]
        return result


# ======================================================================== trainctl through `trainctl submit`


def submit(spec: dict[str, Any], tmp: Path, backend: str | None = None, timeout: float = 600) -> dict[str, Any]:
    """`trainctl submit` (followed until the job ends); returns the clock's JSON plus the submit's wall times."""
    import subprocess

    path = tmp / f"{spec['name']}-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "trainctl.cli", "submit", str(path)]
    if backend:
        cmd += ["--backend", backend, "--wait"]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=python_env(0), cwd=ROOT,
                         stdin=subprocess.DEVNULL)
    t_end = time.time()
    clock = Path(spec["callbacks"][0]["init_args"]["out"])
    if res.returncode != 0 or not clock.is_file():
        raise RuntimeError(f"trainctl submit failed (rc {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    data = json.loads(clock.read_text())
    data["submit_wall"], data["returned_wall"] = t0, t_end
    data["stdout"] = res.stdout[-2000:]
    return data


def run_trainctl(hidden: int, batch: int, epochs: int, tmp: Path, rss_every: int = 0, **extra: Any) -> dict[str, Any]:
    clock_out = str(tmp / f"clock-{time.time_ns()}.json")
    spec = bench_spec(f"cpu-ddp-h{hidden}", hidden, batch, epochs, str(tmp / "runs"), clock_out, rss_every=rss_every,
                      **extra)
    data = submit(spec, tmp)
    first = data["epoch_ends"][0] if data["epoch_ends"] else 0
    ts = intervals_after_warmup(data["ends"], first)
    ranks = [data["max_rss_mb"]] + [json.loads(p.read_text())["max_rss_mb"]
                                    for p in sorted(Path(clock_out).parent.glob(Path(clock_out).name + ".rank*"))]
    return {"step_s": median(ts), "steps": len(ts), "intervals": ts, "threads": data["threads"],
            "max_rss_mb": data["max_rss_mb"], "max_rss_mb_ranks": ranks, "rss": data.get("rss", [])}


# ======================================================================== anchor and plain Lightning (references)


def run_anchor(mode: str, hidden: int, batch: int) -> dict[str, Any]:
    return run_json([str(ANCHOR), mode, str(hidden), str(batch)], env=python_env())


# ======================================================================== parent: alternate, summarize


def child_main(args: argparse.Namespace) -> int:
    out = run_raw(args.hidden, args.batch, args.epochs)
    print(json.dumps(out), flush=True)
    return 0


def run_variant(variant: str, hidden: int, batch: int, epochs: int, tmp: Path) -> dict[str, Any]:
    if variant == "raw":
        return run_json(["-m", "bench.cpu_ddp", "--child", "raw", "--hidden", str(hidden), "--batch", str(batch),
                         "--epochs", str(epochs)])
    if variant == "trainctl":
        return run_trainctl(hidden, batch, epochs, tmp)
    if variant in ("anchor", "lightning"):
        return run_anchor("raw" if variant == "anchor" else "lightning", hidden, batch)
    if variant.startswith("worker"):  # worker[:set=value,...]: the worker path without submit/tracking
        sets = variant.split(":", 1)[1].split(",") if ":" in variant else []
        return worker({"hidden": hidden, "batch": batch, "epochs": epochs, "logger": "off", "sets": sets})
    raise ValueError(variant)


def measure(workload: str, reps: int, epochs: int, tmp: Path, variants: list[str], log: Any = print,
            baseline_variant: str = "trainctl", max_reps: int | None = None, target: float = 0.015,
            budget_s: float | None = None) -> dict[str, Any]:
    """Alternate the variants (A B C …, then … C B A) at least `reps` rounds and up to `max_reps`, until each
    ratio is known to ±target (bench.alternate). The ratio is `baseline_variant` (trainctl's path) ÷ raw, the
    median of the rounds' paired ratios; `spread` holds each figure's interval."""
    hidden, batch = WORKLOADS[workload]
    figures = {"ratio": (baseline_variant, "raw", "ratio"), "added_ms": (baseline_variant, "raw", "diff_ms")}
    if "anchor" in variants:
        figures["raw_vs_anchor_raw"] = ("raw", "anchor", "ratio")
    if "lightning" in variants:
        figures["plain_lightning_ratio"] = ("lightning", "raw", "ratio")
        figures["plain_lightning_added_ms"] = ("lightning", "raw", "diff_ms")

    def one(variant: str, rnd: int) -> dict[str, Any]:
        r = run_variant(variant, hidden, batch, epochs, tmp)
        r["load_avg_1m"] = os.getloadavg()[0]
        log(f"  cpu_ddp {workload} round {rnd} {variant:12} step {1e3 * r['step_s']:7.3f} ms "
            f"(load {r['load_avg_1m']:.2f})")
        return r

    alt = alternate(variants, one, figures, min_rounds=reps, max_rounds=max(reps, max_reps or reps), target=target,
                    budget_s=budget_s)
    runs = alt["runs"]
    med = {v: median([r["step_s"] for r in rs]) for v, rs in runs.items()}
    return {
        "hidden": hidden, "batch": batch, "epochs": epochs, "reps": alt["rounds"],
        "converged": alt["converged"], "target": target,
        "step_ms": {v: 1e3 * m for v, m in med.items()},
        "step_ms_runs": {v: [round(1e3 * r["step_s"], 4) for r in rs] for v, rs in runs.items()},
        "steps_timed": {v: rs[0].get("steps") for v, rs in runs.items()},
        "trainctl_variant": baseline_variant,
        **alt["values"],
        "spread": alt["spread"],
        "trainctl_threads": runs[baseline_variant][0].get("threads"),
        "max_rss_mb_ranks": {v: [median([r["max_rss_mb_ranks"][i] for r in rs]) for i in range(2)]
                             for v, rs in runs.items() if all("max_rss_mb_ranks" in r for r in rs)},
        "load_avg_1m": [r["load_avg_1m"] for rs in runs.values() for r in rs],
    }


def profile(hidden: int, batch: int, epochs: int, mode: str, sets: list[str]) -> dict[str, Any]:
    """Where trainctl's per-step time goes on rank 0: Lightning's SimpleProfiler per hook, or cProfile by package."""
    cfg: dict[str, Any] = {"hidden": hidden, "batch": batch, "epochs": epochs, "logger": "off", "sets": list(sets)}
    if mode == "hooks":
        cfg["sets"].append("trainer.profiler=simple")
        cfg["profile"] = "hooks"
        return worker(cfg)
    if mode == "parts":
        cfg["profile"] = "parts"
        return worker(cfg)
    import pstats
    import tempfile

    keep = tempfile.mkdtemp(prefix="bench-prof-")
    cfg.update(profile="cprofile", dir=keep)
    out = worker(cfg)
    stats = pstats.Stats(str(Path(keep) / "rank0.prof"))
    steps = out["steps"]
    by_pkg: dict[str, float] = {}
    for (path, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in path:
            parts = path.split("site-packages/")[1].split("/")
            key = "/".join(parts[:3])
        elif path.startswith(("~", "<")):
            key = f"builtin {name}"
        else:
            key = path.replace(str(ROOT) + "/", "")
        by_pkg[key] = by_pkg.get(key, 0.0) + tottime
    out["cprofile_ms_per_step_by_file"] = {k: round(1e3 * v / steps, 4) for k, v in
                                           sorted(by_pkg.items(), key=lambda kv: -kv[1])[:40]}
    out["profile_file"] = str(Path(keep) / "rank0.prof")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", choices=["raw"], help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one repetition, two epochs, no reference runs")
    p.add_argument("--reps", type=int, default=5, help="rounds at least (each variant once a round)")
    p.add_argument("--max-reps", type=int, default=15, help="rounds at most, while a ratio is not within ±target")
    p.add_argument("--target", type=float, default=0.015, help="each ratio's 95 %% interval half-width, relative")
    p.add_argument("--workloads", default="tiny,wide")
    p.add_argument("--variants", default="raw,trainctl,anchor,lightning",
                   help="raw, trainctl, anchor, lightning, worker[:spec.override=value,...]")
    p.add_argument("--profile", choices=["hooks", "cprofile", "parts"], help="diagnose trainctl's per-step time")
    p.add_argument("--set", action="append", default=[], help="spec override for --profile")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.profile:
        out = profile(args.hidden, args.batch, args.epochs, args.profile, args.set)
        out.pop("intervals", None)
        text = json.dumps(out, indent=1)
    else:
        results = {}
        variants = ["raw", "trainctl"] if args.quick else args.variants.split(",")
        with tempfile.TemporaryDirectory(prefix="bench-cpu-ddp-") as tmp:
            for w in args.workloads.split(","):
                results[w] = measure(w, 1 if args.quick else args.reps, 2 if args.quick else args.epochs, Path(tmp),
                                     variants, max_reps=1 if args.quick else args.max_reps, target=args.target)
        text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
