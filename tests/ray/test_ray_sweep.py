"""A sweep on the real Ray cluster, each trial its own Ray job: at most 2 at once, cancelled and resumed; a real
MLflow server, real Optuna."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    run_cli,
    steps,
)
from mlflow import MlflowClient
from sweep_helpers import (
    attempt_windows,
    check_parent_and_children,
    children,
    most_at_once,
    slow_steps,
    state_of,
    submit_sweep,
    wait_until,
)

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

RAY = "jobs/digits-sweep-ray.yaml"
# The Jobs API of the cluster under test: cluster/ray's own knob (a second cluster runs on other ports).
RAY_API = f"http://127.0.0.1:{os.environ.get('TRAINCTL_RAY_DASHBOARD_PORT', '8265')}"


@pytest.mark.ray
def test_ray_sweep_two_at_once_cancelled_then_resumed(ray_cluster: None, cluster_mlflow: str, tmp_path: Path) -> None:
    """3 trials, 2 at once, each its own Ray job: `cancel SWEEP` while two train stops both jobs (KILLED, the
    third does not start; `status SWEEP` shows it), `resume SWEEP` continues them in their own runs and runs the
    third; the parent names the best trial and never more than 2 trials (Ray jobs) ran at once."""
    from ray.job_submission import JobSubmissionClient

    uri = cluster_mlflow
    # 20 steps in 30 s: the two jobs start up to ~8 s apart and a cancel takes ~9 s to land, so 1.5 s a step
    # keeps both training until it lands; a checkpoint every 2 steps lets the resumed trials go on from it
    parent = submit_sweep(RAY, tmp_path, uri, [f"backend.ray.address={RAY_API}", "trainer.max_epochs=1",
                                               slow_steps(1.5),
                                               "sweep.space.model.init_args.lr.grid=[0.001, 0.003, 0.01]",
                                               "sweep.space.model.init_args.hidden.grid=[32]",
                                               "checkpoint.every_n_train_steps=2"])
    cl = MlflowClient(tracking_uri=uri)
    sweep_dir = Path(cl.get_run(parent).data.tags["trainctl.run_dir"])

    def two_training() -> list[Any]:  # both at once: their jobs start some seconds apart
        kids = children(uri, parent)
        busy = [k for k in kids if state_of(uri, k.info.run_id) == "RUNNING" and steps(uri, k.info.run_id)]
        return kids if len(busy) == 2 else []

    first = wait_until("two trials training on Ray at once", two_training, 300, poll=0.5)
    res = run_cli("cancel", parent, "--tracking-uri", uri, timeout=300)
    assert res.returncode == 0 and "no trial of it is left running" in res.stdout, res.stdout + res.stderr
    assert state_of(uri, parent) == "KILLED"
    assert {state_of(uri, k.info.run_id) for k in first} == {"KILLED"}
    table = json.loads(run_cli("status", parent, "--tracking-uri", uri, "--json").stdout)
    assert table["backend"] == "ray" and table["status"] == "KILLED", table
    assert [r["state"] for r in table["trial_runs"]] == ["KILLED", "KILLED"], table
    jobs = JobSubmissionClient(RAY_API)

    def ours() -> list[Any]:
        return [j for j in jobs.list_jobs() if str((j.metadata or {}).get("trainctl.run_dir", "")).startswith(
            str(sweep_dir))]

    assert len(ours()) == 2 and all(j.status.is_terminal() for j in ours()), [(j.submission_id, j.status)
                                                                              for j in ours()]
    assert len(children(uri, parent)) == 2

    res = run_cli("resume", parent, "--tracking-uri", uri, "--wait", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    check_parent_and_children(uri, parent, 3, 20)
    for k in first:  # continued in the same child run, from its checkpoint
        assert int(cl.get_run(k.info.run_id).data.tags["trainctl.attempt"]) >= 2
    assert most_at_once(attempt_windows(sweep_dir)) <= 2
    ended = ours()  # Ray's own record: 2 stopped jobs, then one per trial resumed or started
    assert len(ended) == 5 and sum(j.status == "SUCCEEDED" for j in ended) == 3, ended
    assert most_at_once([(j.start_time / 1e3, j.end_time / 1e3) for j in ended]) <= 2
    table = json.loads(run_cli("status", parent, "--tracking-uri", uri, "--json").stdout)
    assert table["trial_runs"][0]["run_id"] == cl.get_run(parent).data.tags["trainctl.best_trial"], table

