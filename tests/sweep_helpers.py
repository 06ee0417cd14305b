"""What the sweep tests share (local, SLURM, Ray): submitting a sweep, its children, and the checks on them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli, steps
from mlflow import MlflowClient


def slow_steps(seconds: float) -> str:
    """A SlowSteps callback: a trial that lasts long enough for a cancel or a requeue to land mid-run."""
    return f'callbacks=[{{class_path: trainctl.testing.faults.SlowSteps, init_args: {{seconds: {seconds}}}}}]'


def submit_sweep(job: str, workdir: Path, uri: str, sets: list[str], *extra: str) -> str:
    args = ["submit", job, "--set", f"workdir={workdir}", "--set", f"tracking.uri={uri}"]
    for s in sets:
        args += ["--set", s]
    res = run_cli(*args, *extra, timeout=300)
    match = re.search(r"sweep id:\s+([0-9a-f]{32})", res.stdout)
    assert res.returncode == 0 and match, res.stdout[-2000:] + res.stderr[-2000:]
    return match.group(1)


def children(uri: str, parent: str) -> list[Any]:
    cl = MlflowClient(tracking_uri=uri)
    exp = cl.get_run(parent).info.experiment_id
    return cl.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def wait_until(what: str, check: Any, timeout: float, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout} s")


def state_of(uri: str, run_id: str) -> str:
    return MlflowClient(tracking_uri=uri).get_run(run_id).data.tags.get("trainctl.state", "")


def attempt_windows(sweep_dir: Path) -> list[tuple[float, float]]:
    out = []
    for f in sweep_dir.glob("trials/*/attempts/*.json"):
        a = json.loads(f.read_text())
        out.append((a["started"], a["ended"] or time.time()))
    return out


def most_at_once(windows: list[tuple[float, float]]) -> int:
    return max(sum(1 for s, e in windows if s <= t < e) for t, _ in windows)


def check_parent_and_children(uri: str, parent: str, trials: int, full: int, metric: str = "val/loss"
                               ) -> list[Any]:
    """The parent holds the space and names its best trial; every trial is a FINISHED child run with its values."""
    cl = MlflowClient(tracking_uri=uri)
    run = cl.get_run(parent)
    assert run.data.tags["trainctl.sweep"] == "parent" and run.data.tags["trainctl.state"] == "FINISHED"
    assert any(k.startswith("sweep/space/") for k in run.data.params)
    kids = children(uri, parent)
    assert len(kids) == trials
    assert all(k.data.tags["trainctl.state"] == "FINISHED" for k in kids), [k.data.tags for k in kids]
    assert all(any(p.startswith("sweep/model.init_args.") for p in k.data.params) for k in kids)
    ranked = [k for k in kids if "trainctl.pruned" not in k.data.tags]
    best = min(ranked, key=lambda k: k.data.metrics[metric])
    assert run.data.tags["trainctl.best_trial"] == best.info.run_id
    assert run.data.metrics[f"best/{metric}"] == pytest.approx(best.data.metrics[metric])
    for k in kids:  # a pruned trial stopped early at a rung, and still FINISHED
        if "trainctl.pruned" in k.data.tags:
            assert int(k.data.tags["trainctl.pruned_rung"]) >= 1 and len(steps(uri, k.info.run_id)) <= full
    return kids


def each_step_once(uri: str, run_id: str, count: int) -> None:
    got = steps(uri, run_id)
    assert got == list(range(got[0], got[0] + count)), got

