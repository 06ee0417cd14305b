"""The tracking server's ceiling: N simulated jobs logging every step through trainctl's own MetricsSink.

    python -m bench.tracking_load [--quick] [--jobs 1,4,16,64] [--seconds 8] [--steps-per-s 20] [--keys 5]
                                  [--servers sqlite,postgres] [--pg-workers 4] [--out FILE]
    python -m bench.run_all --only tracking_load --merge      (its figures into bench/results.json)

Each job is one MLflow run and one MetricsSink (as a job's global rank 0 holds), fed `keys` metrics a step at
`steps-per-s` steps a second for `seconds` (a fast GPU job logging every step). The jobs are spread over up to
4 processes (threads inside each), loopback only. Servers: `sqlite` is the lean server trainctl starts itself (one
worker, sqlite); `postgres` is `make mlflow-server` (cluster/mlflow/up.sh: PostgreSQL + `pg-workers` workers).
Per N and server: sustained points/s delivered during the window, the p50/p99 latency of one batch request, the
server's CPU seconds per 1000 points (the MLflow processes and, for postgres, PostgreSQL's), and the sinks' backlog
at the end of the window in seconds of logging; the knee is the smallest N whose backlog grows (more than 2 s of logging
queued at the end of the window, and more than at mid-window). No point may be lost: every
sink drains (or spools, then uploaded as `trainctl sync` does) and every run's points are counted on the server.
Note: on a small shared machine the simulated jobs' client threads compete with the server for the same cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.procs import ROOT, free_port, write_json
from bench.tracking import mlflow_server, new_run

MAX_JOBS, MAX_PROCS = 64, 4


@contextlib.contextmanager
def postgres_server(workers: int) -> Iterator[tuple[str, list[int]]]:
    """cluster/mlflow/up.sh in a fresh DIR (world-traversable: PostgreSQL runs as `postgres` under root)."""
    workdir = Path(tempfile.mkdtemp(prefix="trainctl-mlflow-bench-"))
    workdir.chmod(0o755)
    env = {**os.environ, "DIR": str(workdir), "PORT": str(free_port()), "PGPORT": str(free_port()),
           "WORKERS": str(workers), "PY": sys.executable}
    try:
        up = subprocess.run(["bash", str(ROOT / "cluster/mlflow/up.sh")], env=env, capture_output=True, text=True,
                            timeout=300)
        if up.returncode != 0:
            raise RuntimeError(f"make mlflow-server failed: {up.stderr[-2000:]}")
        pids = [int((workdir / "run/mlflow.pid").read_text()), int((workdir / "pgdata/postmaster.pid")
                                                                    .read_text().split()[0])]
        yield f"http://127.0.0.1:{env['PORT']}", pids
    finally:
        subprocess.run(["bash", str(ROOT / "cluster/mlflow/down.sh")], env=env, capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


def tree_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their children (the server's workers)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


def _jobs(uri: str, run_ids: list[str], steps_per_s: int, keys: int, seconds: float, spool: str, out: Any) -> None:
    """One process's share of the jobs: a sink each, fed in lockstep; batch latencies timed around the send."""
    import trainctl.metrics as metrics

    latencies: list[float] = []
    real = metrics.batch_sender

    def timed_sender(uri: str) -> metrics.Send:
        send = real(uri)

        def timed(run_id: str, points: list[metrics.Point]) -> None:
            t0 = time.perf_counter()
            send(run_id, points)
            latencies.append(time.perf_counter() - t0)

        return timed

    real(uri)  # imports MLflow's REST client before the window: a fresh process's imports are not the server's time
    metrics.batch_sender = timed_sender  # the sink's own delivery path, with a clock around each request
    sinks = [metrics.MetricsSink(uri, r, Path(spool) / r) for r in run_ids]
    time.sleep(1.0)  # each sink's delivery thread is up
    names = [f"m{i}" for i in range(keys)]
    start, step, backlog = time.monotonic(), 0, []
    while (due := start + step / steps_per_s) < start + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        for sink in sinks:
            sink.add({k: float(step) for k in names}, step)
            sink.nudge()
        if step % steps_per_s == 0:
            backlog.append(sum(len(s.pending) for s in sinks))
        step += 1
    elapsed = time.monotonic() - start
    delivered = sum(s.delivered for s in sinks)
    backlog.append(sum(len(s.pending) for s in sinks))
    spooled = sum(s.close(timeout_s=120) for s in sinks)
    out.put({"produced": step * keys * len(sinks), "steps": step, "delivered_in_window": delivered,
             "elapsed_s": elapsed, "spooled": spooled, "backlog": backlog, "latencies_s": latencies})


def _pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def measure(uri: str, server_pids: list[int], n: int, steps_per_s: int, keys: int, seconds: float,
            max_procs: int = MAX_PROCS) -> dict[str, Any]:
    from mlflow import MlflowClient

    from trainctl.metrics import upload_spool

    run_ids = [new_run(uri, f"load-{n}-{i}") for i in range(n)]
    procs = min(n, max_procs)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    spool = tempfile.mkdtemp(prefix="bench-load-spool-")
    cpu0 = tree_cpu_s(server_pids)
    children = [ctx.Process(target=_jobs, args=(uri, run_ids[i::procs], steps_per_s, keys, seconds, spool, queue))
                for i in range(procs)]
    for c in children:
        c.start()
    parts = [queue.get(timeout=seconds + 600) for _ in children]
    for c in children:
        c.join(60)
    cpu1 = tree_cpu_s(server_pids)
    for rid in run_ids:  # what could not be delivered in time, uploaded as `trainctl sync` does
        if (Path(spool) / rid).is_dir():
            upload_spool(uri, rid, Path(spool) / rid)
    shutil.rmtree(spool, ignore_errors=True)
    cl = MlflowClient(tracking_uri=uri)
    stored = sum(len(cl.get_metric_history(r, f"m{k}")) for r in run_ids for k in range(keys))
    produced = sum(p["produced"] for p in parts)
    window = max(p["elapsed_s"] for p in parts)
    delivered = sum(p["delivered_in_window"] for p in parts)
    offered = n * steps_per_s * keys
    backlog = [sum(vals) for vals in zip(*[p["backlog"] for p in parts])]
    end_s, mid_s = backlog[-1] / offered, backlog[len(backlog) // 2] / offered
    lat = [x for p in parts for x in p["latencies_s"]]
    return {
        "jobs": n, "offered_points_per_s": offered, "points_per_s": delivered / window,
        "p50_batch_ms": 1e3 * (_pct(lat, 0.5) or 0), "p99_batch_ms": 1e3 * (_pct(lat, 0.99) or 0),
        "batches": len(lat), "server_cpu_s_per_1000_points": 1e3 * (cpu1 - cpu0) / max(produced, 1),
        "backlog_end_s": end_s, "backlog_grows": end_s > 2.0 and end_s > mid_s,
        "produced": produced, "stored": stored, "lost": produced - stored,
        "spooled": sum(p["spooled"] for p in parts),
    }


def lean_server_pids(workdir: Path) -> list[int]:
    """The pid of the lean MLflow server started in `workdir` (its workers are its children)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(
        p.info["cmdline"] or []) and "mlflow" in " ".join(p.info["cmdline"] or [])][:1]


def run(jobs: list[int], seconds: float, steps_per_s: int, keys: int, servers: list[str], pg_workers: int,
        log: Any = print, sqlite_at: Path | None = None, uri_at: str | None = None,
        max_procs: int = MAX_PROCS) -> dict[str, Any]:
    """sqlite_at / uri_at: a lean server already running there (run_all --quick shares its own) instead of a
    fresh one; max_procs: the most client processes the jobs are spread over."""
    out: dict[str, Any] = {"seconds": seconds, "steps_per_s": steps_per_s, "keys": keys, "pg_workers": pg_workers,
                           "load_before": os.getloadavg()[0]}
    for server in servers:
        with contextlib.ExitStack() as stack:
            if server == "sqlite" and sqlite_at is not None and uri_at:
                uri, pids = uri_at, lean_server_pids(sqlite_at)
            elif server == "sqlite":
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-sqlite-")))
                uri = stack.enter_context(mlflow_server(tmp))
                pids = lean_server_pids(tmp)
            else:
                uri, pids = stack.enter_context(postgres_server(pg_workers))
            rows = []
            for n in jobs:
                rows.append(measure(uri, pids, n, steps_per_s, keys, seconds, max_procs))
                log(json.dumps({"server": server, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                     for k, v in rows[-1].items()}}))
            knee = next((r["jobs"] for r in rows if r["backlog_grows"]), None)
            out[server] = {"rows": rows, "knee_jobs": knee,
                           "max_points_per_s": max(r["points_per_s"] for r in rows),
                           "lost": sum(r["lost"] for r in rows)}
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 and 4 jobs, 3 s each")
    p.add_argument("--jobs", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--steps-per-s", type=int, default=20)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--servers", default="sqlite,postgres")
    p.add_argument("--pg-workers", type=int, default=4)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    jobs = [1, 4] if a.quick else sorted({min(MAX_JOBS, max(1, int(x))) for x in a.jobs.split(",")})
    res = run(jobs, 3.0 if a.quick else min(a.seconds, 60.0), a.steps_per_s, a.keys, a.servers.split(","),
              a.pg_workers, log=lambda s: print(s, file=sys.stderr, flush=True))
    write_json(res, a.out)
    return 1 if any(res[s]["lost"] for s in a.servers.split(",")) else 0


if __name__ == "__main__":
    sys.exit(main())
