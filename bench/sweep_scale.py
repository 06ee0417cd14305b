"""Sweep scale: a 1000-trial sweep submitted to SLURM as one job array, and `trainctl status SWEEP` over 1000
child runs.

    python -m bench.sweep_scale [--trials 1000] [--others 1000] [--reps 5] [--out bench/results/sweep_scale.json]

submit_s  wall of `trainctl submit jobs/digits-sweep-slurm.yaml` (random search over lr, `--set
          sweep.trials=1000`), from the CLI's start to its return: validation (the base spec, its classes imported,
          a sample of trials), the parent run, the Optuna study, one sbatch of the array. The array is submitted
          held (`backend.slurm.sbatch={hold: true}`), so no trial runs: squeue must list `trials` tasks of ONE
          array job; then `trainctl cancel SWEEP` scancels it and waits until SLURM holds none of its tasks.
          model_import_floor_s: a fresh interpreter importing the model's module (torch, Lightning), which
          submit does once to find import errors before any task is queued; most of submit_s on a busy host.
status_s  median wall of `trainctl status SWEEP` (a cold process each time, a real MLflow server) once the
          parent has `trials` child runs (FINISHED, each with the sweep's metric, as ended trials leave them), in an
          experiment that also holds `others` runs of other jobs. The children come from one search by the
          parent's tag, paged, so the figure does not grow with the other runs: status_s_no_others is the same
          before the others exist.
The child runs are written straight to MLflow (the array is held): the figure is the read side of `status`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.launch import slurm_available
from bench.procs import ROOT, python_env, write_json
from bench.stats import median

JOB = "jobs/digits-sweep-slurm.yaml"
SPACE = "sweep.space.model.init_args.lr={log_uniform: [0.0001, 0.1]}"
HOLD = "backend.slurm.sbatch={hold: true}"  # sbatch --hold: the array is queued, no task starts
MODEL = "trainctl.examples.digits"


def _cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "trainctl.cli", *args], capture_output=True, text=True, timeout=600,
                         env=python_env(0), cwd=ROOT, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"trainctl {' '.join(args)}: rc {res.returncode}\n{res.stdout[-2000:]}\n"
                           f"{res.stderr[-2000:]}")
    return wall, res


def _array_tasks(array: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i %T %r"], capture_output=True, text=True,
                         timeout=60).stdout
    return [line for line in out.splitlines() if line.strip()]


def _runs(uri: str, experiment_id: str, count: int, tags: Any, metric: str | None) -> None:
    """`count` runs with tags(i) (and the metric), written in batches as a job's run would hold them."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    cl = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    for i in range(count):
        run = cl.create_run(experiment_id)
        metrics = [Metric(metric, 1.0 / (i + 1), now, 40)] if metric else []
        cl.log_batch(run.info.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags(i).items()])


def _status(uri: str, sweep_id: str, reps: int, trials: int) -> dict[str, Any]:
    walls = []
    for _ in range(reps):
        wall, res = _cli("status", sweep_id, "--tracking-uri", uri, "--json")
        got = len(json.loads(res.stdout)["trial_runs"])
        if got != trials:
            raise RuntimeError(f"status listed {got} trials, not {trials}")
        walls.append(wall)
    return {"median_wall_s": median(walls), "walls_s": walls}


def measure(uri: str, trials: int = 1000, others: int = 1000, reps: int = 5, log: Any = print) -> dict[str, Any]:
    ok, why = slurm_available()
    if not ok:
        return {"skipped": True, "reason": why}
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {MODEL}"], check=True, env=python_env(0), cwd=ROOT,
                       capture_output=True, timeout=300)
        floor = time.perf_counter() - t0
        wall, res = _cli("submit", JOB, "--set", f"workdir={tmp}", "--set", f"tracking.uri={uri}", "--set",
                         "sweep.method=random", "--set", f"sweep.trials={trials}", "--set", SPACE, "--set", HOLD)
        sweep_id = re.search(r"sweep id:\s+([0-9a-f]{32})", res.stdout).group(1)  # type: ignore[union-attr]
        parent = MlflowClient(tracking_uri=uri).get_run(sweep_id)
        array = parent.data.tags["trainctl.scheduler_job_id"]
        sweep_dir = Path(parent.data.tags["trainctl.run_dir"])
        try:
            tasks = _array_tasks(array)
            log(f"  submit of {trials} trials: {wall:.2f} s (importing the model alone: {floor:.2f} s); squeue: "
                f"{len(tasks)} tasks of array {array}")
            if len(tasks) != trials:
                raise RuntimeError(f"squeue lists {len(tasks)} tasks of array {array}, not {trials}")
            exp = parent.info.experiment_id

            def child(i: int) -> dict[str, str]:
                return {"mlflow.parentRunId": sweep_id, "trainctl.sweep_id": sweep_id, "trainctl.trial": str(i),
                        "trainctl.overrides": json.dumps({"model.init_args.lr": 1e-3 * (1 + i % 97)}),
                        "trainctl.backend": "slurm", "trainctl.state": "FINISHED", "trainctl.attempt": "1",
                        "trainctl.run_dir": str(sweep_dir / "trials" / f"{i:04d}"),
                        "trainctl.scheduler_job_id": f"{array}_{i}", "mlflow.runName": f"trial-{i}"}

            t0 = time.perf_counter()
            _runs(uri, exp, trials, child, "val/loss")
            log(f"  {trials} child runs written in {time.perf_counter() - t0:.1f} s")
            alone = _status(uri, sweep_id, reps, trials)
            log(f"  status over {trials} children: {alone['median_wall_s']:.2f} s")
            _runs(uri, exp, others, lambda i: {"trainctl.backend": "slurm", "trainctl.state": "FINISHED",
                                               "mlflow.runName": f"other-{i}"}, "val/loss")
            crowded = _status(uri, sweep_id, reps, trials)
            log(f"  ... with {others} other runs in the experiment: {crowded['median_wall_s']:.2f} s")
        finally:
            cancel_s, _ = _cli("cancel", sweep_id, "--tracking-uri", uri, "--grace", "120")
        left = _array_tasks(array)
        if left:
            raise RuntimeError(f"after cancel, SLURM still holds {left[:5]}")
        log(f"  cancel of the held array: {cancel_s:.2f} s, no task left")
        return {"trials": trials, "others": others, "submit_s": wall, "model_import_floor_s": floor,
                "submit_minus_model_import_s": wall - floor, "array": array, "tasks_queued": len(tasks),
                "status_s": crowded["median_wall_s"], "status_s_no_others": alone["median_wall_s"],
                "status_walls_s": crowded["walls_s"], "status_walls_no_others_s": alone["walls_s"],
                "cancel_s": cancel_s}


def main(argv: list[str] | None = None) -> int:
    from bench.tracking import mlflow_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--others", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-mlflow-") as tmp, mlflow_server(Path(tmp)) as uri:
        out = measure(uri, args.trials, args.others, args.reps, log=lambda m: print(m, file=sys.stderr, flush=True))
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
