"""Sweeps on this machine: a local sweep cancelled mid-run and resumed, and one whose trials all fail; a real MLflow
server, the real CLI, real Optuna. (The SLURM and Ray sweeps: tests/slurm, tests/ray.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ROOT,
    TRAINCTL,
    run_cli,
    steps,
)
from mlflow import MlflowClient
from sweep_helpers import (
    attempt_windows,
    check_parent_and_children,
    children,
    each_step_once,
    most_at_once,
    slow_steps,
    state_of,
    submit_sweep,
    wait_until,
)

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

LOCAL = "jobs/digits-sweep.yaml"
# The local trials: one epoch (20 steps) of 0.5 s each (10 s); the cancel lands within ~3 s of both training.
LOCAL_SETS = ["sweep.trials=3", "trainer.max_epochs=1", slow_steps(0.5)]


def test_local_sweep_cancelled_then_resumed(mlflow_server: str, tmp_path: Path) -> None:
    """3 trials, 2 at once: cancel while the first two run (nothing is left running, the third does not start),
    then `resume SWEEP` continues both in their own runs, runs the third, and the parent names the best trial."""
    uri = mlflow_server
    parent = submit_sweep(LOCAL, tmp_path, uri, LOCAL_SETS, "--detach")
    # Ctrl-C while following the sweep (as submit and resume follow it) stops the watching only. The follower
    # starts before the trials train, so its start-up is not spent in the cancel's window and Ctrl-C reaches it
    # while it follows.
    watcher = subprocess.Popen([*TRAINCTL, "logs", parent, "-f", "--tracking-uri", uri], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert watcher.stdout is not None and "following sweep" in watcher.stdout.readline()

    def two_training() -> list[Any]:
        kids = children(uri, parent)
        busy = [k for k in kids if len(steps(uri, k.info.run_id)) >= 2]
        return kids if len(busy) == 2 else []

    first = wait_until("two trials training", two_training, 240, poll=0.5)
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 130 and "Traceback" not in err and f"trainctl cancel {parent}" in err, out + err
    assert state_of(uri, parent) == "RUNNING"
    res = run_cli("cancel", parent, "--tracking-uri", uri, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no trial of it is left running" in res.stdout
    assert state_of(uri, parent) == "KILLED"
    assert {state_of(uri, k.info.run_id) for k in first} == {"KILLED"}
    sweep_dir = Path(MlflowClient(tracking_uri=uri).get_run(parent).data.tags["trainctl.run_dir"])
    ps = subprocess.run(["pgrep", "-f", str(sweep_dir)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout  # neither the driver nor a trial's process is left
    assert len(children(uri, parent)) == 2

    res = run_cli("resume", parent, "--tracking-uri", uri, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    kids = check_parent_and_children(uri, parent, 3, 20)
    for k in first:  # continued in the same child run, every step once
        again = MlflowClient(tracking_uri=uri).get_run(k.info.run_id).data.tags
        assert int(again["trainctl.attempt"]) >= 2 and "resume" in again.values()
        if "trainctl.pruned" not in again:
            each_step_once(uri, k.info.run_id, 20)
    assert most_at_once(attempt_windows(sweep_dir)) <= 2

    status = run_cli("status", parent, "--tracking-uri", uri, "--json")
    table = json.loads(status.stdout)["trial_runs"]
    assert table[0]["run_id"] == MlflowClient(tracking_uri=uri).get_run(parent).data.tags[
        "trainctl.best_trial"]
    listed = run_cli("ls", "--tracking-uri", uri).stdout
    assert parent in listed and not any(k.info.run_id in listed for k in kids)
    text = run_cli("status", parent, "--tracking-uri", uri).stdout  # one column per searched path, named short
    assert re.search(r"TRIAL +STATE +val/loss +STEP +ATT +RUN ID +(lr +hidden|hidden +lr)\n", text), text
    assert "lr = model.init_args.lr" in text and all(k.info.run_id in text for k in kids), text
    logs = run_cli("logs", parent, "--tracking-uri", uri)  # the driver's log, then the command for each trial's
    assert logs.returncode == 0 and "· driver (driver.log) <==" in logs.stdout, logs.stdout + logs.stderr
    assert all(f"trainctl logs {k.info.run_id}" in logs.stdout for k in kids), logs.stdout
    ended = run_cli("logs", parent, "-f", "--tracking-uri", uri)  # an ended sweep: its end, at once
    assert ended.returncode == 0 and f"sweep {parent}: FINISHED" in ended.stdout, ended.stdout + ended.stderr
    refused = run_cli("logs", parent, "--rank", "0", "--tracking-uri", uri)
    assert refused.returncode == 2 and "is a sweep" in refused.stderr and "HINT" in refused.stderr, refused.stderr

def test_a_sweep_whose_trials_all_fail_says_so_once(mlflow_server: str, tmp_path: Path) -> None:
    """Every trial raises in the user's code: the sweep ends FAILED after its first two trials, naming the first
    failure, and starts no more trials."""
    uri = mlflow_server
    fail = 'callbacks=[{class_path: trainctl.testing.faults.RaiseAtStep, init_args: {step: 1, always: true}}]'
    args = ["submit", LOCAL, "--set", f"workdir={tmp_path}", "--set", f"tracking.uri={uri}", "--set",
            "sweep.trials=6", "--set", fail]
    res = run_cli(*args, timeout=600)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    parent = re.search(r"sweep id:\s+([0-9a-f]{32})", res.stdout).group(1)  # type: ignore[union-attr]
    tags = MlflowClient(tracking_uri=uri).get_run(parent).data.tags
    assert tags["trainctl.state"] == "FAILED" and "trials all failed" in tags["trainctl.reason"]
    assert "injected failure" in tags["trainctl.reason"]
    assert res.stdout.count("trials all failed") == 1
    assert 2 <= len(children(uri, parent)) <= 3  # the two that failed, and at most one started meanwhile

