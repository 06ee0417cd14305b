"""Fixed and per-epoch cost of the Ray path against the local backend, on the same digits job.

    .venv/bin/python -m bench.ray_overhead [--epochs 8] [--repeat 1] [--modes local,ray-report,ray]
                                           [--uri http://127.0.0.1:5001] [--json PATH]

Needs the local Ray cluster (`bash cluster/ray/up.sh 1`: head + 1 worker node, 1 CPU each) and an MLflow server
(--uri; `python -m trainctl.mlflow_server --port 5001 --workdir /tmp/mlf-ray`). Every mode submits
jobs/digits-ray.yaml through the real CLI (`trainctl submit --wait`): 2 ranks of gloo DDP on this machine,
E epochs of 20 steps, no early stop, a resume checkpoint at each epoch end, tracking to the MLflow server:

  local       backend local: submitit starts 2 ranks on this machine (plain Lightning DDP)
  ray-report  backend ray, 2 nodes x 1 worker, with TRAINCTL_RAY_REPORT_EVERY_EPOCH=1: each epoch, what Ray's
              own Lightning integration does (RayTrainReportCallback: a checkpoint to a temp dir, reported to
              Ray Train, which copies it to Ray storage, then a barrier) -- what trainctl's Ray path avoids
  ray         backend ray as shipped: trainctl's own checkpoints only, nothing reported to Ray per epoch

`EpochClock` (below; named in the spec's callbacks, so the Ray jobs ship this module to the workers as the
user's code) records rank 0's time at each train epoch end. per-epoch = median gap between consecutive epoch
ends (each includes validation and the epoch-end checkpoint); fixed = wall - epochs x per-epoch, where wall
runs from `trainctl submit` to its return after the run ended (imports, submission, worker start,
test, shutdown). first step = first train/loss point in MLflow - submit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
JOB = "jobs/digits-ray.yaml"
CLOCK_FILE = "bench-epochs.jsonl"
MODES = {
    "local": ["backend.kind=local", "resources.nodes=1", "resources.devices_per_node=2"],
    "ray-report": ['backend.ray.env_vars={"TRAINCTL_RAY_REPORT_EVERY_EPOCH": "1"}'],
    "ray": [],
}


class EpochClock(pl.Callback):
    """Rank 0 appends {"epoch", "t", "steps": [step end times]} to <run dir>/bench-epochs.jsonl at every train
    epoch end."""

    def __init__(self) -> None:
        self.steps: list[float] = []

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.steps.append(time.time())

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            with open(Path(trainer.default_root_dir) / CLOCK_FILE, "a") as fh:
                fh.write(json.dumps({"epoch": trainer.current_epoch, "t": time.time(), "steps": self.steps}) + "\n")
        self.steps = []


def run_once(mode: str, epochs: int, uri: str, workdir: Path) -> dict[str, Any]:
    clock = [{"class_path": "bench.ray_overhead.EpochClock", "init_args": {}}]
    sets = [f"workdir={workdir}", f"tracking.uri={uri}", f"trainer.max_epochs={epochs}", "early_stopping=null",
            "checkpoint.every_n_train_steps=null", f"callbacks={json.dumps(clock)}", *MODES[mode]]
    args = [sys.executable, "-m", "trainctl.cli", "submit", JOB, "--wait"]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    run_id = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout)
    run_dir = re.search(r"run dir:\s+(\S+)", res.stdout)
    if res.returncode != 0 or not run_id or not run_dir:
        raise RuntimeError(f"{mode}: submit failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    epochs_seen = [json.loads(line) for line in (Path(run_dir.group(1)) / CLOCK_FILE).read_text().splitlines()]
    ends = [e["t"] for e in epochs_seen]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    per_epoch = statistics.median(gaps)
    step_gaps = [b - a for e in epochs_seen[1:] for a, b in itertools.pairwise(e["steps"])]
    between = [b["steps"][0] - a["steps"][-1] for a, b in itertools.pairwise(epochs_seen) if a["steps"] and b["steps"]]
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id.group(1), "train/loss")
    first = min(m.timestamp for m in history) / 1000 - t0
    attempt = json.loads((Path(run_dir.group(1)) / "attempts" / "0001.json").read_text())
    return {"mode": mode, "run_id": run_id.group(1), "wall_s": wall, "first_step_s": first,
            "to_rank0_train_s": attempt["started"] - t0, "after_last_epoch_s": t0 + wall - ends[-1],
            "load_1min": os.getloadavg()[0],
            "per_epoch_s": per_epoch, "epoch_gaps_s": gaps, "fixed_s": wall - epochs * per_epoch,
            "train_s": ends[-1] - ends[0] + per_epoch, "steps": len(history),
            "step_s": statistics.median(step_gaps) if step_gaps else None,
            "epoch_boundary_s": statistics.median(between) if between else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="runs per mode (alternating); medians are reported")
    p.add_argument("--modes", default="local,ray-report,ray")
    p.add_argument("--uri", default="http://127.0.0.1:5001", help="MLflow server")
    p.add_argument("--json", help="write every run's figures here")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; valid: {', '.join(MODES)}")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trainctl-ray-bench-") as tmp:
        for i in range(args.repeat):
            for mode in modes:
                r = run_once(mode, args.epochs, args.uri, Path(tmp) / f"{mode}-{i}")
                runs.append(r)
                print(f"{mode:10} run {i + 1}: wall {r['wall_s']:5.1f} s  first step {r['first_step_s']:5.1f} s  "
                      f"per epoch {r['per_epoch_s']:.3f} s  fixed {r['fixed_s']:5.1f} s (rank 0 in train() at "
                      f"{r['to_rank0_train_s']:.1f} s, after the last epoch {r['after_last_epoch_s']:.1f} s)  "
                      f"step {r['step_s']:.4f} s  "
                      f"epoch boundary {r['epoch_boundary_s']:.3f} s  load {r['load_1min']:.1f}  "
                      f"({r['steps']} steps; gaps "
                      + " ".join(f"{g:.2f}" for g in r["epoch_gaps_s"]) + ")", flush=True)
    print(f"\n{args.epochs} epochs x 20 steps, 2 gloo ranks; medians of {args.repeat} run(s) per mode")
    keys = ("wall_s", "first_step_s", "to_rank0_train_s", "per_epoch_s", "step_s", "fixed_s")
    print(f"{'mode':10} {'wall s':>7} {'1st step s':>10} {'train() s':>9} {'epoch s':>8} {'step ms':>8} "
          f"{'fixed s':>8} {'epoch/local':>11}")
    table: dict[str, dict[str, float]] = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        table[mode] = {k: statistics.median(r[k] for r in mine) for k in keys}
    base = table.get("local", {}).get("per_epoch_s")
    for mode, t in table.items():
        ratio = f"{t['per_epoch_s'] / base:.2f}x" if base else "-"
        print(f"{mode:10} {t['wall_s']:7.1f} {t['first_step_s']:10.1f} {t['to_rank0_train_s']:9.1f} "
              f"{t['per_epoch_s']:8.3f} {1000 * t['step_s']:8.1f} {t['fixed_s']:8.1f} {ratio:>11}")
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "runs": runs, "medians": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
