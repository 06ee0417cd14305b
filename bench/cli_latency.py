"""CLI latency: `status`, `ls`, `logs` (no -f), `cancel` and `validate`, each a cold process, median of ≥ 5.

    python -m bench.cli_latency [--reps 7] [--out bench/results/cli.json]

The farm: one real short local job (jobs/digits.yaml, 5 steps) in an embedded sqlite store, plus `--runs` runs
created as `submit` creates them (tracking.create_run) and ended FINISHED with a few metrics, so `ls` lists
several runs. Every command is run against that sqlite store and against a real MLflow server serving the same
store (the cluster setup). `cancel` cancels a fresh PENDING run each time whose scheduler job has ended: the
whole command (find the run, write KILLED, ask the launcher, close the attempt) without the wait for a job's
ranks to save, which is the job's time, not the command's. `validate jobs/digits.yaml` reads the spec's
classes from their source (no import of Lightning); `import pytorch_lightning` in a fresh interpreter, what
`validate` cost when it imported them, is measured alongside.
Wall time (what a user waits) is the figure; CPU time (user+sys of the child) is kept too, since on a shared,
loaded machine the wall time mostly measures waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import ROOT, python_env, write_json
from bench.stats import median

COMMANDS = ("status", "ls", "logs", "cancel")  # per store; validate reads no store


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, cpu s, exit code) of one fresh interpreter running `args`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode not in (0,):
        raise RuntimeError(f"{args} failed rc {res.returncode}: {res.stdout[-1500:]}\n{res.stderr[-1500:]}")
    return wall, cpu, res.returncode


def farm(tmp: Path, runs: int, env: dict[str, str]) -> dict[str, Any]:
    """The real job and the created runs; returns the store, the job's run id and scheduler job id."""
    import re

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trainctl import tracking
    from trainctl.runstate import State
    from trainctl.spec import parse_spec, read_yaml

    workdir = tmp / "runs"
    sql = tracking.embedded_uri(str(workdir))
    sets = ["trainer.max_epochs=1", "trainer.max_steps=5", "early_stopping=null", "checkpoint.every_n_train_steps=null",
            f"workdir={workdir}", f"tracking.uri={sql}"]
    res = subprocess.run([sys.executable, "-m", "trainctl.cli", "submit", "jobs/digits.yaml",
                          *[a for s in sets for a in ("--set", s)]], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=900, stdin=subprocess.DEVNULL)
    match = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout)
    if res.returncode != 0 or not match:
        raise RuntimeError(f"the farm's job failed rc {res.returncode}: {res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    job_run = match.group(1)
    cl = MlflowClient(tracking_uri=sql)
    job_id = cl.get_run(job_run).data.tags["trainctl.scheduler_job_id"]
    spec = parse_spec(read_yaml(ROOT / "jobs" / "digits.yaml"), "digits.yaml", check_classes=False)
    now = int(time.time() * 1000)
    for _ in range(runs):
        rid = tracking.create_run(spec, sql, "local")
        cl.log_batch(rid, metrics=[Metric(k, 1.0 / (s + 1), now, s) for s in range(20) for k in ("train/loss",
                                                                                                  "epoch")])
        tracking.set_state(sql, rid, State.FINISHED, reason="finished")
    return {"sql": sql, "workdir": workdir, "job_run": job_run, "job_id": job_id, "spec": spec}


def pending_run(f: dict[str, Any], tmp: Path) -> str:
    """A run as `submit` leaves it, whose scheduler job has already ended: what cancel acts on."""
    from mlflow import MlflowClient

    from trainctl import tracking

    rid = tracking.create_run(f["spec"], f["sql"], "local")
    run_dir = tmp / f"pending-{rid[:8]}"
    run_dir.mkdir()
    cl = MlflowClient(tracking_uri=f["sql"])
    cl.set_tag(rid, "trainctl.run_dir", str(run_dir))
    cl.set_tag(rid, "trainctl.scheduler_job_id", f["job_id"])
    return rid


def measure(reps: int = 7, runs: int = 6, log: Any = print) -> dict[str, Any]:
    import compileall

    from bench.tracking import mlflow_server

    env = python_env(0)
    # what `pip install` leaves: compiled modules (the source tree has none when PYTHONDONTWRITEBYTECODE is set)
    compileall.compile_dir(str(ROOT / "src" / "trainctl"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp_s:
        tmp = Path(tmp_s)
        env["TRAINCTL_STATE_DIR"] = str(tmp / "state")
        f = farm(tmp, runs, env)
        with mlflow_server(f["workdir"]) as http:
            stores = {"sqlite": f["sql"], "server": http}
            wall: dict[str, dict[str, list[float]]] = {s: {c: [] for c in COMMANDS} for s in stores}
            cpu: dict[str, dict[str, list[float]]] = {s: {c: [] for c in COMMANDS} for s in stores}
            floors: dict[str, list[float]] = {"python -c pass": [], "import pytorch_lightning": []}
            validate: dict[str, list[float]] = {"wall": [], "cpu": []}
            for rep in range(reps):
                for store, uri in stores.items():
                    pending = pending_run(f, tmp)
                    argv = {
                        "status": ["status", f["job_run"][:8]], "ls": ["ls"], "logs": ["logs", f["job_run"]],
                        "cancel": ["cancel", pending, "--grace", "5"],
                    }
                    for c in COMMANDS:
                        w, u, _ = timed(["-m", "trainctl.cli", *argv[c], "--tracking-uri", uri], env)
                        wall[store][c].append(w)
                        cpu[store][c].append(u)
                w, u, _ = timed(["-m", "trainctl.cli", "validate", "jobs/digits.yaml"], env)
                validate["wall"].append(w)
                validate["cpu"].append(u)
                for name in floors:
                    floors[name].append(timed(["-c", name.removeprefix("python -c ")], env)[0])
                log(f"  cli rep {rep}: " + ", ".join(f"{s} {c} {wall[s][c][-1]:.2f} s" for s in stores
                                                    for c in COMMANDS) + f", validate {w:.2f} s")
    return {
        "reps": reps, "runs_in_store": runs + 1 + 2 * reps,
        "median_wall_s": {s: {c: median(v) for c, v in d.items()} for s, d in wall.items()},
        "median_cpu_s": {s: {c: median(v) for c, v in d.items()} for s, d in cpu.items()},
        "validate": {"median_wall_s": median(validate["wall"]), "median_cpu_s": median(validate["cpu"]),
                     "runs": validate},
        "floors_wall_s": {k: median(v) for k, v in floors.items()},
        "wall_s": wall, "cpu_s": cpu, "load_avg_1m_at_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    write_json(measure(args.reps, args.runs, log=lambda m: print(m, file=sys.stderr, flush=True)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
