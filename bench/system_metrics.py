"""System-metrics overhead: step time with each node's monitor sampling ÷ the same job with it off.

    python -m bench.system_metrics [--quick] [--reps 3] [--epochs 12] [--interval 1] [--out bench/results/sm.json]

Both variants run trainctl's worker path on 2 gloo ranks (bench.worker_path) with rank 0 delivering its
step metrics to a real local MLflow server (the default job). `on` adds trainctl.worker.system_metrics on local
rank 0, as worker/entrypoint.py starts it, sampling every `--interval` seconds (1 s: ten times the default rate,
so that a few-second run holds several samples and the figure is an upper bound for the default 10 s). The
figure is the ratio of the mean step times (not the medians: a sample costs the step it lands in, which a median
would not see), alternated in rounds A B, B A, … (bench.alternate), the median of the rounds' paired ratios.
Every cost of the monitor is paid per sample (the sample's CPU, its delivery, and here the MLflow server's handling
of it on the same two cores as the ranks), so the overhead scales with the sampling rate: the figure at the default
10 s interval is 1 + (ratio - 1) * interval / 10, reported with the measured ratio and its spread beside it.
Also reported: CPU time one sample takes in the monitor's thread, and the share of one core that makes at the
default interval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from bench.alternate import alternate
from bench.procs import write_json
from bench.stats import median
from bench.tracking import WORKLOADS, mlflow_server, new_run, points_on_server
from bench.worker_path import worker

DEFAULT_INTERVAL_S = 10.0  # tracking.system_metrics' default


class MonitorOn(pl.Callback):
    """trainctl's system-metrics monitor on local rank 0 for the fit: started and stopped as the worker does."""

    def __init__(self, uri: str, run_id: str, interval_s: float, out: str) -> None:
        self.uri, self.run_id, self.interval_s, self.out = uri, run_id, interval_s, out
        self.monitor: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from trainctl.worker.system_metrics import SystemMetrics

        if trainer.local_rank == 0:
            self.monitor = SystemMetrics(self.uri, self.run_id, socket.gethostname(), self.interval_s, time.time(),
                                         Path(self.out).parent / "spool").start()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None:
            return
        self.monitor.stop(timeout_s=30)
        m = self.monitor
        Path(self.out).write_text(json.dumps({"samples": m.samples, "sample_cpu_s": m.sample_cpu_s,
                                              "delivered": m.sink.delivered}))


def one_run(uri: str, workload: str, epochs: int, interval_s: float | None, tmp: Path) -> dict[str, Any]:
    hidden, batch = WORKLOADS[workload]
    run_id = new_run(uri, f"bench-system-metrics-{workload}")
    cfg: dict[str, Any] = {"hidden": hidden, "batch": batch, "epochs": epochs, "logger": "mlflow",
                           "tracking_uri": uri, "run_id": run_id}
    out = tmp / f"monitor-{run_id}.json"
    if interval_s:
        cfg["callbacks"] = [{"class_path": "bench.system_metrics.MonitorOn", "init_args": {
            "uri": uri, "run_id": run_id, "interval_s": interval_s, "out": str(out)}}]
    r = worker(cfg)
    r.pop("intervals", None)
    if interval_s:
        r["monitor"] = json.loads(out.read_text())
        r["system_points"] = sum(n for k, n in points_on_server(uri, run_id).items() if k.startswith("system/"))
    return r


def measure(uri: str, workload: str, reps: int, epochs: int, interval_s: float, log: Any = print,
            off_runs: list[dict[str, Any]] | None = None, max_reps: int | None = None,
            target: float = 0.015) -> dict[str, Any]:
    """`off_runs`: runs of the same job already made without the monitor (--quick shares them)."""
    with tempfile.TemporaryDirectory(prefix="bench-sm-") as tmp_s:

        def one(variant: str, rnd: int) -> dict[str, Any]:
            r = one_run(uri, workload, epochs, interval_s if variant == "on" else None, Path(tmp_s))
            log(f"  system_metrics {workload} round {rnd} {variant:3} mean step {1e3 * r['mean_step_s']:7.3f} ms"
                + (f" samples {r['monitor']['samples']}" if variant == "on" else ""))
            return r

        if off_runs:  # pairs with the runs already made
            runs = {"on": [one("on", i) for i in range(reps)], "off": list(off_runs)}
            alt = {"values": {"ratio": median([r["mean_step_s"] for r in runs["on"]]) /
                              median([r["mean_step_s"] for r in runs["off"]])}, "spread": {}, "rounds": reps}
        else:
            alt = alternate(["on", "off"], one, {"ratio": ("on", "off", "ratio")}, min_rounds=reps,
                            max_rounds=max(reps, max_reps or reps), target=target, key="mean_step_s")
            runs = alt["runs"]
    mean = {v: median([r["mean_step_s"] for r in rs]) for v, rs in runs.items()}
    samples = sum(r["monitor"]["samples"] for r in runs["on"])
    cpu_per_sample = sum(r["monitor"]["sample_cpu_s"] for r in runs["on"]) / max(samples, 1)
    per_default = interval_s / DEFAULT_INTERVAL_S
    return {
        "ratio_at_default_interval": 1 + (alt["values"]["ratio"] - 1) * per_default,
        "ci95_at_default_interval": [1 + (b - 1) * per_default
                                     for b in alt["spread"].get("ratio", {}).get("ci95", [])],
        "hidden": WORKLOADS[workload][0], "batch": WORKLOADS[workload][1], "epochs": epochs, "reps": reps,
        "interval_s": interval_s,
        "mean_step_ms": {v: 1e3 * m for v, m in mean.items()},
        "mean_step_ms_runs": {v: [round(1e3 * r["mean_step_s"], 4) for r in rs] for v, rs in runs.items()},
        "median_step_ms": {v: 1e3 * median([r["step_s"] for r in rs]) for v, rs in runs.items()},
        "ratio": alt["values"]["ratio"], "spread": alt["spread"], "rounds": alt["rounds"],
        "samples_per_run": [r["monitor"]["samples"] for r in runs["on"]],
        "system_points_per_run": [r["system_points"] for r in runs["on"]],
        "sample_cpu_ms": 1e3 * cpu_per_sample,
        "core_share_at_default_interval": cpu_per_sample / DEFAULT_INTERVAL_S,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repetition of the tiny workload, two epochs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--workload", default="wide", choices=sorted(WORKLOADS))
    p.add_argument("--uri", help="use this MLflow server instead of starting one")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sm-server-") as tmp:
        server = contextlib.nullcontext(args.uri) if args.uri else mlflow_server(Path(tmp))
        with server as uri:
            result = measure(uri, "tiny" if args.quick else args.workload, 1 if args.quick else args.reps,
                             2 if args.quick else args.epochs, args.interval)
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
