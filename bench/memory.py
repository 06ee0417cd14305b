"""Host memory: peak resident set per rank of the trainctl path ÷ the raw loop; and a leak check over ≥ 10k steps.

    python -m bench.memory [--quick] [--steps 10000] [--out bench/results/memory.json]

peak   the hidden-1024 / batch-256 workload of bench.cpu_ddp (2 gloo ranks): `trainctl submit` (every trainctl
       callback, the MetricsSink feeding a real local MLflow server from rank 0, the epoch-end resume checkpoints)
       against the hand-written DDP loop; each rank's VmHWM (peak RSS) at the end of training, alternated A B, B A.
       The ratio is max over ranks (trainctl) ÷ max over ranks (raw); per-rank figures are kept.
leak   the same trainctl path on the hidden-64 / batch-32 workload for ≥ `--steps` steps (113 steps an epoch,
       so a resume checkpoint every 113 steps and a metrics point every step on the server): rank 0's RSS every
       200 steps. Growth = least-squares slope over the second half of the run (after allocator and caches have
       settled), in MiB per 10k steps, and the RSS difference between the end and the midpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import run_json, write_json
from bench.stats import median

STEPS_PER_EPOCH_TINY = 113  # 7188 samples / 2 ranks / batch 32, rounded up


def _slope(points: list[tuple[int, float]]) -> float:
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


def peak(uri: str, reps: int, epochs: int, tmp: Path, log: Any = print) -> dict[str, Any]:
    from bench.cpu_ddp import run_trainctl

    runs: dict[str, list[list[float]]] = {"trainctl": [], "raw": []}
    for rep in range(reps):
        for v in (["trainctl", "raw"] if rep % 2 == 0 else ["raw", "trainctl"]):
            if v == "raw":
                r = run_json(["-m", "bench.cpu_ddp", "--child", "raw", "--hidden", "1024", "--batch", "256",
                              "--epochs", str(epochs)])
            else:
                r = run_trainctl(1024, 256, epochs, tmp, **{"tracking.uri": uri})
            runs[v].append(r["max_rss_mb_ranks"])
            log(f"  memory peak rep {rep} {v:8} VmHWM per rank {[round(x) for x in r['max_rss_mb_ranks']]} MiB")
    tc = median([max(r) for r in runs["trainctl"]])
    raw = median([max(r) for r in runs["raw"]])
    return {
        "peak_rss_mb": {"trainctl": tc, "raw": raw},
        "peak_rss_mb_per_rank": {v: [median([r[i] for r in rs]) for i in range(len(rs[0]))] for v, rs in runs.items()},
        "ratio": tc / raw,
        "runs": runs,
    }


def leak(uri: str, steps: int, tmp: Path, log: Any = print) -> dict[str, Any]:
    from bench.cpu_ddp import run_trainctl

    epochs = math.ceil(steps / STEPS_PER_EPOCH_TINY)
    r = run_trainctl(64, 32, epochs, tmp, rss_every=200, **{"tracking.uri": uri})
    samples = [(int(s), float(m)) for s, m in r["rss"]]
    half = [p for p in samples if p[0] >= samples[-1][0] / 2] if samples else []
    slope = _slope(half) * 10_000 if half else float("nan")
    mid = half[0][1] if half else float("nan")
    out = {
        "steps": samples[-1][0] if samples else 0,
        "rss_mb_first": samples[0][1] if samples else float("nan"),
        "rss_mb_mid": mid,
        "rss_mb_end": samples[-1][1] if samples else float("nan"),
        "growth_mb_second_half": (samples[-1][1] - mid) if samples else float("nan"),
        "slope_mb_per_10k_steps": slope,
        "samples": samples,
    }
    out["no_growth"] = bool(half) and abs(out["growth_mb_second_half"]) < 5.0 and abs(slope) < 5.0
    log(f"  memory leak check: {out['steps']} steps, RSS {out['rss_mb_first']:.0f} → {out['rss_mb_mid']:.0f} → "
        f"{out['rss_mb_end']:.0f} MiB, slope {slope:.2f} MiB/10k steps")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one peak pair (1 epoch), a 600-step leak check")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--uri", help="an MLflow server to use instead of starting one")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import contextlib

    from bench.tracking import mlflow_server

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_s:
        tmp = Path(tmp_s)
        server = contextlib.nullcontext(args.uri) if args.uri else mlflow_server(tmp / "mlflow")
        with server as uri:
            out = {"peak": peak(uri, 1 if args.quick else args.reps, 1 if args.quick else 3, tmp),
                   "leak": leak(uri, 600 if args.quick else args.steps, tmp)}
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
