"""Launch latency: `trainctl submit` → first training step (wall clock, never negative); and job end →
`trainctl submit` noticing it (its follow loop returning the final state). Local and SLURM backends.

    python -m bench.launch [--quick] [--reps 3] [--backends local,slurm] [--out bench/results/launch.json]

The job: the digits MLP (bench.workload.BenchMLP, hidden 64, batch 32) on 2 CPU ranks, 5 steps, tracked on a real
local MLflow server started here (reachable from the SLURM nodes of the local cluster), submitted with the real
CLI (`python -m trainctl.cli submit SPEC` — followed until the end; `--backend slurm --wait` for SLURM).
  first_step   rank 0's first on_train_batch_end (bench.workload.StepEnds, wall clock) - the moment the CLI
               process was started: the figure. It includes everything on the way: the CLI's interpreter start
               and imports (validation imports the model's module: torch, Lightning), creating the MLflow run,
               the local controller's start (submitit) or SLURM's scheduling, each rank's interpreter start and
               imports, DDP's rendezvous, the resume-checkpoint search and the first step itself.
  import floor what the critical path spends starting interpreters and importing, measured in the same run by
               fresh interpreters importing the same modules: the CLI's (trainctl.cli, trainctl.control, the
               model's module for validation: torch, Lightning; mlflow, to create the run), the local
               controller's (submitit), a rank's (trainctl.worker.entrypoint, the model's module, mlflow). Kept
               as a detail
               (first_step_minus_imports_s): the ranks import in parallel and overlap the controller, so the
               difference is an estimate that can go below zero; it is not the figure.
  end_noticed  the CLI returned - the last rank's end marker (attempts/0001/rank-*.end.json, written when the
               rank's training is over and its verdict is known): closing the run (metrics drained, logs
               uploaded, the verdict recorded in MLflow), the processes exiting and the CLI's poll.
SLURM is skipped (and marked so) when src/trainctl/launchers/slurm/ is absent or `cluster/slurm/status.sh`
reports the cluster down. Same host, same clock: the local SLURM cluster runs its nodes on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.procs import ROOT, python_env, write_json
from bench.stats import median
from bench.workload import bench_spec

IMPORTS = {
    # what `trainctl submit` imports before it acts (spec validation imports the model's module)
    "cli": "import trainctl.cli, trainctl.control, trainctl.spec, trainctl.components, mlflow, bench.workload",
    # submitit's local controller process
    "controller": "import submitit, submitit.local.local",
    # one rank: submitit unpickles launchers/<backend>/injob.run_rank (it imports trainctl.worker.entrypoint); the
    # spec's module; mlflow (rank 0)
    "rank": "import submitit, trainctl.worker.entrypoint, trainctl.worker.build, bench.workload, mlflow, "
            "sklearn.datasets",
}


def import_time(modules: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", modules], check=True, env=python_env(), cwd=ROOT,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def slurm_available() -> tuple[bool, str]:
    if not (ROOT / "src" / "trainctl" / "launchers" / "slurm" / "submit.py").is_file():
        return False, "src/trainctl/launchers/slurm/submit.py is not there"
    status = ROOT / "cluster" / "slurm" / "status.sh"
    if not status.is_file():
        return False, "no cluster/slurm/status.sh"
    res = subprocess.run(["bash", str(status)], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return False, (res.stdout.strip() or res.stderr.strip())[:300]
    return True, res.stdout.strip()


def submit_once(backend: str, uri: str, tmp: Path, steps: int) -> dict[str, Any]:
    clock_out = tmp / f"clock-{backend}-{time.time_ns()}.json"
    spec = bench_spec(f"launch-{backend}", 64, 32, 1, str(tmp / "runs"), str(clock_out),
                      **{"trainer.max_steps": steps, "tracking.uri": uri, "backend.kind": backend,
                         "resources.mem_gb": 1, "resources.time_min": 10})
    path = tmp / f"launch-{backend}-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "trainctl.cli", "submit", str(path)]
    if backend != "local":
        cmd.append("--wait")
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=python_env(0), cwd=ROOT,
                         stdin=subprocess.DEVNULL)
    t_returned = time.time()
    match = re.search(r"run dir:\s+(\S+)", res.stdout)
    if res.returncode != 0 or not clock_out.is_file() or not match:
        raise RuntimeError(f"submit ({backend}) failed rc {res.returncode}:\n{res.stdout[-2500:]}\n"
                           f"{res.stderr[-2500:]}")
    clock = json.loads(clock_out.read_text())
    run_dir = Path(match.group(1))
    ends = [json.loads(p.read_text())["time"] for p in (run_dir / "attempts").glob("0001/rank-*.end.json")]
    starts = [json.loads(p.read_text())["time"] for p in (run_dir / "attempts").glob("0001/rank-*.start.json")]
    attempt = json.loads((run_dir / "attempts" / "0001.json").read_text())
    return {
        "first_step_s": clock["first_step_wall"] - t0,
        "rank_start_s": min(starts) - t0 if starts else None,  # the worker's first act (after its imports)
        "train_start_s": clock["train_start_wall"] - t0,
        "end_noticed_s": t_returned - max(ends),
        "verdict_to_return_s": t_returned - attempt["ended"],
        "total_s": t_returned - t0,
        "outcome": attempt["outcome"],
    }


def measure(backends: list[str], reps: int, steps: int, log: Any = print, uri: str | None = None) -> dict[str, Any]:
    import contextlib

    from bench.tracking import mlflow_server

    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if "slurm" in backends:
        ok, why = slurm_available()
        if not ok:
            skipped["slurm"] = why
            backends = [b for b in backends if b != "slurm"]
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    imports: dict[str, list[float]] = {k: [] for k in IMPORTS}
    with tempfile.TemporaryDirectory(prefix="bench-launch-", dir=_shared_tmp()) as tmp_s, \
            (contextlib.nullcontext(uri) if uri else mlflow_server(Path(tmp_s) / "mlflow")) as uri:
        tmp = Path(tmp_s)
        for rep in range(reps):
            for b in (backends if rep % 2 == 0 else list(reversed(backends))):
                r = submit_once(b, uri, tmp, steps)
                runs[b].append(r)
                log(f"  launch rep {rep} {b:6} first step {r['first_step_s']:.2f} s, end noticed "
                    f"{r['end_noticed_s']:.2f} s, total {r['total_s']:.2f} s ({r['outcome']})")
            for k, mods in IMPORTS.items():  # alternated with the submits: same machine state
                imports[k].append(import_time(mods))
    imp = {k: median(v) for k, v in imports.items()}
    floors = {"local": imp["cli"] + imp["controller"] + imp["rank"], "slurm": imp["cli"] + imp["rank"]}
    for b, rs in runs.items():
        first = median([r["first_step_s"] for r in rs])
        out[b] = {
            "first_step_wall_s": first,
            "import_floor_s": floors[b],
            "first_step_minus_imports_s": first - floors[b],
            "end_noticed_s": median([r["end_noticed_s"] for r in rs]),
            "verdict_to_return_s": median([r["verdict_to_return_s"] for r in rs]),
            "rank_start_s": median([r["rank_start_s"] for r in rs if r["rank_start_s"] is not None]),
            "total_s": median([r["total_s"] for r in rs]),
            "runs": rs,
        }
    for b, why in skipped.items():
        out[b] = {"skipped": True, "reason": why}
    out["import_times_s"] = {k: {"median": imp[k], "runs": v} for k, v in imports.items()}
    return out


def _shared_tmp() -> str | None:
    """The SLURM nodes of the local cluster run on this host: the system temp dir is shared with them."""
    return os.environ.get("TRAINCTL_BENCH_TMP")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one submit on the local backend only")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--backends", default="local,slurm")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        out = measure(["local"], 1, args.steps)
        out["slurm"] = {"skipped": True, "reason": "--quick"}
    else:
        out = measure(args.backends.split(","), args.reps, args.steps)
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
