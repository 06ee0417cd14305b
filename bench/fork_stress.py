"""Stress: DataLoader workers started beside a rank's threads, with every stack saved when a rank stalls.

One run is the shortest job that starts loader workers, on trainctl's worker path (as `bench.worker_path`:
the real `build_trainer`, callbacks, async checkpoint writer, heartbeat and watchdog, resumable data path, rank 0's
metrics sink on an sqlite store): the digits example on 2 gloo ranks with 2 persistent workers per loader; sanity
check, one short epoch with validation and a checkpoint every 2 steps, then test from the best checkpoint. That is
6 worker starts per rank per run while the checkpoint writer, the sink, the watchdog and gloo's threads run. A job
is two rank processes (forked from this one, which holds the imports) running --runs-per-job runs in a row, each
with a fresh Trainer, watchdog and loaders; the ranks start as `worker.entrypoint.train` does.

A rank whose watchdog hears no batch for --stall-s saves every thread's stack (faulthandler) and a py-spy dump
(Python and native frames) of itself and of every process below it (loader workers, forkserver) under
<out>/stalls/job-NNNN/. If it makes progress again within another --stall-s it was slow (starved of CPU: counted
as `slow`), else it leaves and the run counts as a stall. A job that ends no other way within its bound is dumped
the same way from outside (`timeout`). Run it under `nice -n 19` on a shared machine.

    python -m bench.fork_stress --runs 300          # prints one JSON summary; results.jsonl has every job
    PYTHONPATH=<other tree>/src python -m bench.fork_stress ...   # the same loop on another trainctl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PY_SPY = Path(sys.executable).with_name("py-spy")


def job_spec(run_dir: Path, stall_s: float, workers: int) -> dict[str, Any]:
    return {
        "name": "fork-stress",
        "model": {"class_path": "trainctl.examples.digits.DigitsClassifier", "init_args": {"hidden": 32}},
        "data": {"class_path": "trainctl.examples.digits.DigitsDataModule",
                 "init_args": {"batch_size": 32, "num_workers": workers}},
        "trainer": {"max_epochs": 1, "limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2,
                    "num_sanity_val_steps": 1, "deterministic": True},
        "resources": {"nodes": 1, "devices_per_node": 2, "accelerator": "cpu", "cpus_per_task": 1},
        "checkpoint": {"monitor": "val/acc", "mode": "max", "save_top_k": 1, "every_n_train_steps": 2},
        "early_stopping": None,
        "fault_tolerance": {"max_restarts": 0, "on_failure": "fail", "collective_timeout_s": stall_s},
        "workdir": str(run_dir.parent),
        "backend": {"kind": "local"},
    }


def dump_tree(pid: int, dest: Path, label: str) -> None:
    """py-spy dumps (Python + native frames) of `pid` and of every process below it."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in [pid, *descendants(pid)]:
        try:
            out = subprocess.run([str(PY_SPY), "dump", "--native", "--pid", str(p)], capture_output=True, text=True,
                                 timeout=60)
            text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"py-spy failed: {exc!r}"
        (dest / f"{label}-pid{p}.txt").write_text(text)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def _rank(rank: int, port: int, cfg: dict[str, Any]) -> None:
    """One rank as `worker.entrypoint.train` runs it, minus the run bookkeeping, cfg["iterations"] times over
    (a fresh Trainer, watchdog and loaders each time); exit 3 = stalled."""
    os.setpgid(0, 0)  # the rank and its loader workers: one group, killed together on a hard timeout
    base = Path(cfg["run_dir"])
    base.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(base / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for fd in (1, 2):  # as submitit's files: each rank's output in a file of its own
        os.dup2(log_fd, fd)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", NODE_RANK="0", LOCAL_WORLD_SIZE="2")
    import logging

    from trainctl.worker.loader_workers import fork_server_now

    fork_server_now(["trainctl.examples.digits"])  # as worker.entrypoint.train does before its threads start

    from trainctl import tracking
    from trainctl.metrics import MetricsSink
    from trainctl.spec import parse_spec
    from trainctl.worker.fit import fit
    from trainctl.worker.watchdog import Watchdog

    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    stall_dir = Path(cfg["stall_dir"])

    def stalled(why: str) -> None:
        """The watchdog thread: its own report is written; add every process's stacks. A rank that makes
        progress again within another --stall-s was slow (starved of CPU), not hung: it goes on."""
        stall_dir.mkdir(parents=True, exist_ok=True)
        (stall_dir / f"rank{rank}-reason.txt").write_text(why)
        dump_tree(os.getpid(), stall_dir, f"rank{rank}")
        for f in base.glob("iter-*/failures/*"):
            with contextlib.suppress(OSError):
                (stall_dir / f.name).write_bytes(f.read_bytes())
        beat = watchdog.last_beat
        deadline = time.monotonic() + cfg["stall_s"]
        while time.monotonic() < deadline:
            if watchdog.last_beat != beat:
                with open(base / "slow.txt", "a") as fh:
                    fh.write(f"rank {rank}: {why}; progressed again\n")
                return
            time.sleep(1)
        os._exit(3)

    sink = None
    if rank == 0:
        tracking.current_state(cfg["tracking_uri"], cfg["run_id"])  # as the worker's _attach: MLflow imported
        sink = MetricsSink(cfg["tracking_uri"], cfg["run_id"], base / "spool")
    progress = open(base / f"progress-rank{rank}.txt", "a")  # noqa: SIM115 - one line per finished iteration
    for i in range(cfg["iterations"]):
        run_dir = base / f"iter-{i:02d}"
        spec = parse_spec(job_spec(run_dir, cfg["stall_s"], cfg["workers"]), check_classes=False)
        watchdog = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", rank, i + 1,
                            on_stall=stalled).start()
        done = fit(spec, run_dir, cfg["run_id"], sink, rank, 2, watchdog=watchdog)
        watchdog.stop()
        done.built.checkpoint_io.teardown()
        progress.write(f"{i}\n")
        progress.flush()
    if sink is not None:
        sink.close(timeout_s=30)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown (see bench.procs.run_json: a gloo destructor can deadlock)


def one_job(n: int, iterations: int, out: Path, args: argparse.Namespace, run_id: str, uri: str) -> dict[str, Any]:
    """Two ranks running `iterations` runs; the row says how many finished on both and how the job ended."""
    from bench.procs import free_port

    run_dir = out / "jobs" / f"job-{n:04d}"
    stall_dir = out / "stalls" / f"job-{n:04d}"
    cfg = {"run_dir": str(run_dir), "stall_dir": str(stall_dir), "stall_s": args.stall_s, "workers": args.workers,
           "tracking_uri": uri, "run_id": run_id, "iterations": iterations}
    ctx = multiprocessing.get_context("fork")  # the ranks inherit this interpreter's imports: seconds per job
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, cfg), daemon=False) for r in range(2)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    bound = t0 + args.run_bound_s * iterations
    while any(p.is_alive() for p in procs) and time.monotonic() < bound:
        if any(p.exitcode not in (None, 0) for p in procs):  # one rank left: its peer would wait on gloo
            time.sleep(2)
            break
        time.sleep(0.2)
    codes = [p.exitcode for p in procs]
    outcome = "ok" if codes == [0, 0] else "stall" if 3 in codes else "timeout" if None in codes else "error"
    slow = (run_dir / "slow.txt").read_text().splitlines() if (run_dir / "slow.txt").exists() else []
    if outcome == "timeout":
        for r, p in enumerate(procs):
            if p.exitcode is None:
                dump_tree(p.pid, stall_dir, f"rank{r}-outside")
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.join(timeout=10)
    done = min(len((run_dir / f"progress-rank{r}.txt").read_text().split()) if
               (run_dir / f"progress-rank{r}.txt").exists() else 0 for r in range(2))
    row = {"job": n, "outcome": outcome, "codes": codes, "runs_done": done, "slow": slow,
           "s": round(time.monotonic() - t0, 2)}
    if outcome != "ok":
        stall_dir.mkdir(parents=True, exist_ok=True)
        for f in [*run_dir.glob("*.log"), *run_dir.glob("iter-*/failures/*")]:
            with contextlib.suppress(OSError):
                (stall_dir / f.name).write_bytes(f.read_bytes())
    else:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def create_run(out: Path) -> tuple[str, str]:
    """One MLflow run on an sqlite store, made in a child: this process stays free of MLflow's threads."""
    uri = f"sqlite:///{out / 'mlflow.db'}"
    code = ("import sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
            "e = c.get_experiment_by_name('fork-stress'); "
            "x = e.experiment_id if e else c.create_experiment('fork-stress'); "
            "print(c.create_run(x).info.run_id)")
    res = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True)
    return uri, res.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--runs-per-job", type=int, default=10, help="runs in the same two rank processes")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fork_stress"))
    ap.add_argument("--stall-s", type=float, default=60.0, help="no batch for this long = a stall (watchdog)")
    ap.add_argument("--run-bound-s", type=float, default=300.0, help="a job not over by then is dumped and killed")
    ap.add_argument("--workers", type=int, default=2, help="loader workers per loader")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    uri, run_id = create_run(args.out)
    import sklearn.datasets  # noqa: F401  - imported once here; every rank is forked with them
    import torch  # noqa: F401

    import trainctl.examples.digits
    import trainctl.worker.build
    import trainctl.worker.entrypoint  # noqa: F401

    counts = {"runs": 0, "stall": 0, "timeout": 0, "error": 0, "slow": 0}
    t0 = time.monotonic()
    n = 0
    with open(args.out / "results.jsonl", "a") as results:
        while counts["runs"] < args.runs:
            row = one_job(n, min(args.runs_per_job, args.runs - counts["runs"]), args.out, args, run_id, uri)
            n += 1
            counts["runs"] += row["runs_done"] + (row["outcome"] != "ok")  # the run that stalled counts too
            if row["outcome"] != "ok":
                counts[row["outcome"]] += 1
            counts["slow"] += len(row["slow"])
            results.write(json.dumps(row) + "\n")
            results.flush()
            print(json.dumps(row), file=sys.stderr, flush=True)
    wall = time.monotonic() - t0
    print(json.dumps({**counts, "jobs": n, "wall_s": round(wall, 1), "s_per_run": round(wall / counts["runs"], 2),
                      "out": str(args.out)}), flush=True)
    return 0 if counts["stall"] + counts["timeout"] + counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
