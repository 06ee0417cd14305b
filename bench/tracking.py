"""Tracking overhead: step time while logging every step to a real local MLflow server ÷ the same job, no logger.

    python -m bench.tracking [--quick] [--reps 3] [--workloads tiny,wide] [--out bench/results/tracking.json]

A real, lean MLflow server (trainctl.mlflow_server: uvicorn, one worker, sqlite store) is started here. Both
variants run trainctl's worker path on 2 gloo ranks (bench.worker_path: trainctl.worker.fit with every trainctl
callback, the data path, the watchdog):
  mlflow     rank 0 feeds trainctl's MetricsSink (a daemon thread, batches of ≤ 1000 points) bound to a run on
             that server; train/loss and grad/norm every step (tracking.log_every_n_steps = 1, the default).
  no_logger  the same job with the Trainer's loggers removed: Lightning never builds or converts a metrics dict.
Alternated in rounds A B, B A, … (bench.alternate); the ratio is the median of the rounds' paired ratios,
its spread beside it. Each mlflow run's points are counted on the server.
Note: on a 2-core machine the server process shares the cores with the two ranks, so its CPU time is charged
to the training step; on a cluster it runs elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.alternate import alternate
from bench.procs import free_port, write_json
from bench.stats import median
from bench.worker_path import worker

WORKLOADS = {"tiny": (64, 32), "wide": (1024, 256)}
KEYS = ("train/loss", "grad/norm", "epoch")  # what a step of the benchmark job logs


@contextlib.contextmanager
def mlflow_server(workdir: Path, timeout_s: float = 120) -> Iterator[str]:
    """A real MLflow server on a free port, as `make mlflow` starts it; stopped on exit."""
    from trainctl.mlflow_server import answers, start

    port = free_port()
    proc = start(port, workdir, workdir / "server.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not answers(uri):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / "server.log").read_text()[-2000:] if (workdir / "server.log").exists() else ""
                raise RuntimeError(f"MLflow server did not start: {log}")
            time.sleep(0.25)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except Exception:
            proc.kill()


def new_run(uri: str, name: str) -> str:
    from mlflow import MlflowClient

    cl = MlflowClient(tracking_uri=uri)
    exp = cl.get_experiment_by_name("trainctl-bench")
    exp_id = exp.experiment_id if exp else cl.create_experiment("trainctl-bench")
    return cl.create_run(exp_id, run_name=name).info.run_id


def points_on_server(uri: str, run_id: str) -> dict[str, int]:
    from mlflow import MlflowClient

    cl = MlflowClient(tracking_uri=uri)
    keys = cl.get_run(run_id).data.metrics.keys()
    return {k: len(cl.get_metric_history(run_id, k)) for k in keys}


def measure(uri: str, workload: str, reps: int, epochs: int, log: Any = print, rss_every: int = 0,
            max_reps: int | None = None, target: float = 0.015) -> dict[str, Any]:
    """mlflow and no_logger alternated in rounds (bench.alternate) until the ratio is known to ±target."""
    hidden, batch = WORKLOADS[workload]

    def one(variant: str, rnd: int) -> dict[str, Any]:
        cfg: dict[str, Any] = {"hidden": hidden, "batch": batch, "epochs": epochs, "rss_every": rss_every}
        if variant == "mlflow":
            cfg.update(logger="mlflow", tracking_uri=uri, run_id=new_run(uri, f"bench-tracking-{workload}"))
        else:
            cfg["logger"] = "none"
        r = worker(cfg)
        r["load_avg_1m"] = os.getloadavg()[0]
        if variant == "mlflow":
            r["points"] = points_on_server(uri, cfg["run_id"])
        log(f"  tracking {workload} round {rnd} {variant:9} step {1e3 * r['step_s']:7.3f} ms "
            f"(load {r['load_avg_1m']:.2f})" + (f" points {r['points']}" if variant == "mlflow" else ""))
        return r

    alt = alternate(["mlflow", "no_logger"], one, {"ratio": ("mlflow", "no_logger", "ratio")}, min_rounds=reps,
                    max_rounds=max(reps, max_reps or reps), target=target)
    runs = alt["runs"]
    med = {v: median([r["step_s"] for r in rs]) for v, rs in runs.items()}
    last = runs["mlflow"][-1]
    total_steps = len(last.get("epoch_ends", [])) and last["epoch_ends"][-1]
    return {
        "hidden": hidden, "batch": batch, "epochs": epochs, "reps": alt["rounds"], "converged": alt["converged"],
        "step_ms": {v: 1e3 * m for v, m in med.items()},
        "step_ms_runs": {v: [round(1e3 * r["step_s"], 4) for r in rs] for v, rs in runs.items()},
        "ratio": alt["values"]["ratio"],
        "spread": alt["spread"],
        "points_per_run": last.get("points"),
        "steps_per_run": total_steps,
        "all_points_delivered": all(min((r.get("points") or {"": 0}).values()) >= total_steps for r in runs["mlflow"]),
        "sink": last.get("sink"),
        "rss_samples": last.get("rss", []),
        "load_avg_1m": [r["load_avg_1m"] for rs in runs.values() for r in rs],
    }


def delivery_cost(uri: str, batches: int = 20, batch: int = 600) -> dict[str, Any]:
    """CPU that delivering one batch costs, per 1000 points: in the sending thread (what rank 0's training
    thread competes with for the GIL) for trainctl's REST batch vs MlflowClient.log_batch, and in the server
    (its whole process tree; None when the server is not on this machine)."""
    from trainctl.metrics import batch_sender, client_sender

    rest, via_client = batch_sender(uri), client_sender(uri)
    server = _server_pids(uri.rsplit(":", 1)[-1])
    out: dict[str, Any] = {"points_per_batch": batch, "batches": batches}
    for rep in range(2):
        for name, send in (("rest", rest), ("mlflow_client", via_client))[:: 1 if rep % 2 == 0 else -1]:
            run_id = new_run(uri, f"bench-delivery-{name}")
            step, cpu, server_cpu = 0, [], []
            for _ in range(batches):
                now = int(time.time() * 1000)
                points = [(k, 0.5, step + i, now) for i in range(batch // 3) for k in KEYS]
                step += batch // 3
                s0, t0 = _tree_cpu(server), time.thread_time()
                send(run_id, points)
                cpu.append(time.thread_time() - t0)
                server_cpu.append(_tree_cpu(server) - s0)
            per_1000 = 1e6 * sum(cpu) / (batches * batch)
            out.setdefault(f"client_cpu_ms_per_1000_points_{name}", []).append(per_1000)
            if server:
                out.setdefault("server_cpu_us_per_point", []).append(1e6 * sum(server_cpu) / (batches * batch))
    for key in [k for k in out if isinstance(out[k], list)]:
        out[key] = median(out[key])
    out["client_cpu_ratio_rest_vs_mlflow_client"] = (out["client_cpu_ms_per_1000_points_rest"]
                                                     / out["client_cpu_ms_per_1000_points_mlflow_client"])
    return out


def _server_pids(port: str) -> list[int]:
    """The MLflow server listening on port and its worker processes (/proc, this machine only)."""
    pids = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit() and f"--port\0{port}\0" in (d / "cmdline").read_text():
                pids.append(int(d.name))
    return pids


def _tree_cpu(pids: list[int]) -> float:
    """user + system seconds of pids (their threads included)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repetition of the tiny workload, two epochs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workloads", default="tiny,wide")
    p.add_argument("--uri", help="use this MLflow server instead of starting one")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    workloads = ["tiny"] if args.quick else args.workloads.split(",")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        server = contextlib.nullcontext(args.uri) if args.uri else mlflow_server(Path(tmp))
        with server as uri:
            for w in workloads:
                results[w] = measure(uri, w, 1 if args.quick else args.reps, 2 if args.quick else args.epochs)
            results["delivery"] = delivery_cost(uri, batches=3 if args.quick else 20)
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
