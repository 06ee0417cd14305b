"""The digits job on the real local Ray cluster (cluster/ray: head + 1 worker node, 1 CPU each), through the real CLI,
the Ray Jobs API and a real MLflow server.

Two workers on two nodes; a worker process killed mid-run (and a warning signal before that) → Ray Train restarts
the group, which resumes from the last checkpoint in the same MLflow run with every step logged once; cancel →
KILLED with the workers gone; specs the cluster can never hold → a clear error at submit, no job left pending;
a module written against `lightning.pytorch` (the two-node job). The cluster holds one 2-worker job at a time: tests
run one by one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    attempt_records,
    callbacks,
    run_cli,
    run_dir,
    run_info,
    steps,
    submit,
    wait_for,
    wait_state,
    wait_steps,
)
from mlflow import MlflowClient

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

JOB = "jobs/digits-ray.yaml"
API = "http://127.0.0.1:8265"
SHORT = ["trainer.max_epochs=3", "early_stopping=null", "checkpoint.every_n_train_steps=null"]
SUBMITTED: list[str] = []  # Ray jobs of this module: stopped at its end if still running
LIGHTNING = ["model.class_path=trainctl.examples.digits_lightning.DigitsClassifier",
             "data.class_path=trainctl.examples.digits_lightning.DigitsDataModule"]
RANK_LINE = re.compile(r"trainctl: rank (\d+)/(\d+) on node (\S+) \(ray job (\S+), node \w+, pid (\d+)\)")


def _client() -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(API)


def _submit(workdir: Path, uri: str, sets: list[str], *extra: str) -> tuple[str, str]:
    res, run_id = submit(workdir, uri, sets, *extra, job=JOB, timeout=300)
    assert res.returncode == 0 and run_id, res.stdout[-3000:] + res.stderr[-3000:]
    sid = re.search(r"Ray job (\S+) on", res.stdout)
    assert sid, res.stdout
    SUBMITTED.append(sid.group(1))
    return run_id, sid.group(1)


def _rank_pid(rdir: Path, attempt: int, rank: int, timeout: float = 60) -> int:
    path = rdir / "attempts" / f"{attempt:04d}" / f"rank-{rank:04d}.start.json"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return int(json.loads(path.read_text())["pid"])


def _job_end(sid: str, timeout: float = 90) -> str:
    """The Ray job's final status (the driver outlives the run's verdict by the workers' shutdown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _client().get_job_status(sid)
        if status.is_terminal():
            return str(status.value)
        time.sleep(0.5)
    raise AssertionError(f"Ray job {sid} still not over after {timeout} s")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def uri(ray_cluster: None, cluster_mlflow: str) -> Iterator[str]:
    yield cluster_mlflow
    client = _client()
    for sid in SUBMITTED:  # a failed test leaves its job behind: do not let it hold the cluster
        if not client.get_job_status(sid).is_terminal():
            client.stop_job(sid)


def test_digits_job_on_two_nodes(uri: str, tmp_path: Path) -> None:
    """jobs/digits-ray.yaml, followed with --wait: one worker on each node, the usual run in MLflow. Its module and
    data are written against `lightning.pytorch` (the same code as the digits example): the workers build that
    namespace's Trainer and strategy; the other tests here run `pytorch_lightning` ones."""
    t0 = time.monotonic()
    res, run_id = submit(tmp_path, uri, ["trainer.max_epochs=5", *LIGHTNING], "--wait", job=JOB, timeout=300)
    wall = time.monotonic() - t0
    assert res.returncode == 0 and run_id, res.stdout[-3000:] + res.stderr[-3000:]
    sid = re.search(r"Ray job (\S+) on", res.stdout).group(1)  # type: ignore[union-attr]
    SUBMITTED.append(sid)
    assert f"run {run_id} ended FINISHED" in res.stdout
    assert "trainctl: rank 0/2 on node" in res.stdout, "--wait follows rank 0's output"
    run = run_info(uri, run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags["trainctl.state"] == "FINISHED"
    assert tags["trainctl.backend"] == "ray" and tags["trainctl.world_size"] == "2"
    assert tags["trainctl.scheduler_job_id"] == sid and tags["trainctl.attempt"] == "1"
    assert sorted(tags["trainctl.ray.nodes"].split(",")) == ["head", "worker-1"], "one worker per node"
    assert metrics["val/acc"] >= 0.9 and metrics["test/acc"] >= 0.85 and "grad/norm" in metrics, metrics
    history = steps(uri, run_id)
    assert history == list(range(len(history))) and len(history) == 5 * 20, "every step exactly once"
    assert _client().get_job_status(sid).value == "SUCCEEDED"
    # The Jobs API's log, split by rank: each rank announced its node.
    logs = run_cli("logs", run_id, "--tracking-uri", uri).stdout
    ranks = {(int(m[1]), m[3]) for m in RANK_LINE.finditer(logs)}
    assert {r for r, _ in ranks} == {0, 1} and {n for _, n in ranks} == {"head", "worker-1"}, ranks
    one = run_cli("logs", run_id, "--tracking-uri", uri, "--rank", "1").stdout
    assert "trainctl: rank 1/2 on node" in one and "rank 0/2" not in one
    status = json.loads(run_cli("status", run_id, "--tracking-uri", uri, "--json").stdout)
    assert status["status"] == "FINISHED" and status["backend"] == "ray" and status["scheduler_job_id"] == sid
    client = MlflowClient(tracking_uri=uri)
    assert {"spec.yaml", "checkpoints", "logs"} <= {a.path for a in client.list_artifacts(run_id)}
    logs_uploaded = [a.path for a in client.list_artifacts(run_id, "logs")]
    assert any(f"{sid}_0_log" in p for p in logs_uploaded) and any(f"{sid}_1_log" in p for p in logs_uploaded)
    rdir = run_dir(uri, run_id)
    assert list((rdir / "checkpoints" / "resume").glob("step-*.ckpt")) and (rdir / "ray").is_dir()
    print(f"\ndigits-ray, 5 epochs on 2 nodes: submit → FINISHED {wall:.1f} s")


def test_worker_killed_mid_run_resumes_in_the_same_run(uri: str, tmp_path: Path) -> None:
    """A warning signal (SIGUSR2) on rank 1: an agreed stop and a restart (attempt 2). Then rank 1's process is
    SIGKILLed: Ray restarts the group again (attempt 3). Each attempt resumes from the newest checkpoint; the
    run's history holds every step once."""
    run_id, sid = _submit(tmp_path, uri, [*SHORT, "checkpoint.every_n_train_steps=10",
                                          callbacks(("SlowSteps", {"seconds": 0.25}))])
    rdir = run_dir(uri, run_id)
    wait_steps(uri, run_id, 12)
    os.kill(_rank_pid(rdir, 1, 1), signal.SIGUSR2)
    wait_steps(uri, run_id, 35)
    victim = _rank_pid(rdir, 2, 1)
    os.kill(victim, signal.SIGKILL)
    assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 300) == "FINISHED"
    attempts = attempt_records(rdir)
    assert [a["cause"] for a in attempts] == ["first", "timeout", "killed-without-verdict"], attempts
    assert attempts[0]["outcome"] == "requeue" and attempts[0]["reason"].startswith("timeout: stopped at step")
    assert attempts[1]["outcome"] == "requeue" and "Ray Train restarted the worker group" in attempts[1]["reason"]
    assert attempts[2]["outcome"] == "finished" and attempts[2]["step"] == 60
    tags = run_info(uri, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.attempt"] == "3"
    assert tags["trainctl.attempt.3.cause"] == "killed-without-verdict"
    assert steps(uri, run_id) == list(range(60)), "no duplicate and no gap across the restarts"
    text = _client().get_job_logs(sid)
    resumed = re.findall(r"Restoring states from the checkpoint path at \S+/resume/step-(\d+)\.ckpt", text)
    assert len(resumed) == 2 and 0 < int(resumed[0]) <= int(resumed[1]) < 60, resumed
    assert not _alive(victim)
    assert _job_end(sid) == "SUCCEEDED"


def test_cancel_marks_killed_and_ends_the_workers(uri: str, tmp_path: Path) -> None:
    run_id, sid = _submit(tmp_path, uri, [*SHORT, callbacks(("SlowSteps", {"seconds": 0.5}))])
    rdir = run_dir(uri, run_id)
    wait_steps(uri, run_id, 3)
    pids = [_rank_pid(rdir, 1, r) for r in (0, 1)]
    res = run_cli("cancel", run_id, "--tracking-uri", uri)
    assert res.returncode == 0, res.stderr
    assert _job_end(sid, 30) == "STOPPED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    assert not any(_alive(p) for p in pids), "the workers end with the job"
    (attempt,) = wait_for("the attempt's verdict", lambda: [a for a in attempt_records(rdir) if a["outcome"]], 60)
    run = run_info(uri, run_id)
    assert run.info.status == "KILLED" and run.data.tags["trainctl.state"] == "KILLED"
    assert attempt["outcome"] == "killed", "never requeued"
    assert json.loads(run_cli("status", run_id, "--tracking-uri", uri, "--json").stdout)["status"] == "KILLED"
    assert run_cli("cancel", run_id, "--tracking-uri", uri).returncode == 2, "already ended"


@pytest.mark.parametrize(("sets", "words"), [
    (["resources.accelerator=gpu"], ["2 GPU in all", "the cluster has 0"]),
    (["resources.nodes=3"], ["3 CPU in all", "the cluster has 2"]),
])
def test_impossible_spec_is_refused_at_once(uri: str, tmp_path: Path, sets: list[str], words: list[str]) -> None:
    t0 = time.monotonic()
    res, _ = submit(tmp_path, uri, sets, job=JOB, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "can never run this job" in res.stderr and all(w in res.stderr for w in words), res.stderr
    assert time.monotonic() - t0 < 60
    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(exps, filter_string=f"tags.`trainctl.run_dir` LIKE '{tmp_path}%'")
    assert run.data.tags["trainctl.state"] == "FAILED" and "can never run" in run.data.tags["trainctl.reason"]
    assert not [j for j in _client().list_jobs() if (j.metadata or {}).get("trainctl.run_id") == run.info.run_id]
