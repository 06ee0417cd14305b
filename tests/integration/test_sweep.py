"""Sweeps on the real thing: a local sweep cancelled mid-run and resumed, and a SLURM sweep as one job array with a
task requeued mid-run; a real MLflow server, the real CLI, real Optuna."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    ROOT,
    TRAINCTL,
    assert_same_training_state,
    final_checkpoint,
    run_cli,
    run_dir,
    steps,
    submit,
    wait_state,
)
from mlflow import MlflowClient

from trainctl.sweep import engine
from trainctl.sweep.space import assignments, parse_sweep

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

LOCAL = "jobs/digits-sweep.yaml"
SLURM = "jobs/digits-sweep-slurm.yaml"
STEPS = 40  # 2 epochs x 20 steps of digits on one rank


def _slow(seconds: float) -> str:
    """A SlowSteps callback: a trial that lasts long enough for a cancel or a requeue to land mid-run."""
    return f'callbacks=[{{class_path: trainctl.testing.faults.SlowSteps, init_args: {{seconds: {seconds}}}}}]'


# The local trials: one epoch (20 steps) of 0.5 s each (10 s); the cancel lands within ~3 s of both training.
LOCAL_SETS = ["sweep.trials=3", "trainer.max_epochs=1", _slow(0.5)]


def _submit(job: str, workdir: Path, uri: str, sets: list[str], *extra: str) -> str:
    args = ["submit", job, "--set", f"workdir={workdir}", "--set", f"tracking.uri={uri}"]
    for s in sets:
        args += ["--set", s]
    res = run_cli(*args, *extra, timeout=300)
    match = re.search(r"sweep id:\s+([0-9a-f]{32})", res.stdout)
    assert res.returncode == 0 and match, res.stdout[-2000:] + res.stderr[-2000:]
    return match.group(1)


def _children(uri: str, parent: str) -> list[Any]:
    cl = MlflowClient(tracking_uri=uri)
    exp = cl.get_run(parent).info.experiment_id
    return cl.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def _wait(what: str, check: Any, timeout: float, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout} s")


def _state(uri: str, run_id: str) -> str:
    return MlflowClient(tracking_uri=uri).get_run(run_id).data.tags.get("trainctl.state", "")


def _attempt_windows(sweep_dir: Path) -> list[tuple[float, float]]:
    out = []
    for f in sweep_dir.glob("trials/*/attempts/*.json"):
        a = json.loads(f.read_text())
        out.append((a["started"], a["ended"] or time.time()))
    return out


def _most_at_once(windows: list[tuple[float, float]]) -> int:
    return max(sum(1 for s, e in windows if s <= t < e) for t, _ in windows)


def _check_parent_and_children(uri: str, parent: str, trials: int, full: int, metric: str = "val/loss"
                               ) -> list[Any]:
    """The parent holds the space and names its best trial; every trial is a FINISHED child run with its values."""
    cl = MlflowClient(tracking_uri=uri)
    run = cl.get_run(parent)
    assert run.data.tags["trainctl.sweep"] == "parent" and run.data.tags["trainctl.state"] == "FINISHED"
    assert any(k.startswith("sweep/space/") for k in run.data.params)
    kids = _children(uri, parent)
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


def _each_step_once(uri: str, run_id: str, count: int) -> None:
    got = steps(uri, run_id)
    assert got == list(range(got[0], got[0] + count)), got


def test_local_sweep_cancelled_then_resumed(mlflow_server: str, tmp_path: Path) -> None:
    """3 trials, 2 at once: cancel while the first two run (nothing is left running, the third does not start),
    then `resume SWEEP` continues both in their own runs, runs the third, and the parent names the best trial."""
    uri = mlflow_server
    parent = _submit(LOCAL, tmp_path, uri, LOCAL_SETS, "--detach")
    # Ctrl-C while following the sweep (as submit and resume follow it) stops the watching only. The follower
    # starts before the trials train, so its start-up is not spent in the cancel's window and Ctrl-C reaches it
    # while it follows.
    watcher = subprocess.Popen([*TRAINCTL, "logs", parent, "-f", "--tracking-uri", uri], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert watcher.stdout is not None and "following sweep" in watcher.stdout.readline()

    def two_training() -> list[Any]:
        kids = _children(uri, parent)
        busy = [k for k in kids if len(steps(uri, k.info.run_id)) >= 2]
        return kids if len(busy) == 2 else []

    first = _wait("two trials training", two_training, 240, poll=0.5)
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 130 and "Traceback" not in err and f"trainctl cancel {parent}" in err, out + err
    assert _state(uri, parent) == "RUNNING"
    res = run_cli("cancel", parent, "--tracking-uri", uri, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no trial of it is left running" in res.stdout
    assert _state(uri, parent) == "KILLED"
    assert {_state(uri, k.info.run_id) for k in first} == {"KILLED"}
    sweep_dir = Path(MlflowClient(tracking_uri=uri).get_run(parent).data.tags["trainctl.run_dir"])
    ps = subprocess.run(["pgrep", "-f", str(sweep_dir)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout  # neither the driver nor a trial's process is left
    assert len(_children(uri, parent)) == 2

    res = run_cli("resume", parent, "--tracking-uri", uri, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    kids = _check_parent_and_children(uri, parent, 3, 20)
    for k in first:  # continued in the same child run, every step once
        again = MlflowClient(tracking_uri=uri).get_run(k.info.run_id).data.tags
        assert int(again["trainctl.attempt"]) >= 2 and "resume" in again.values()
        if "trainctl.pruned" not in again:
            _each_step_once(uri, k.info.run_id, 20)
    assert _most_at_once(_attempt_windows(sweep_dir)) <= 2

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


def _sacct(array: str) -> list[tuple[str, str]]:
    res = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"], capture_output=True,
                         text=True, timeout=30)
    return [tuple(line.split("|")[:2]) for line in res.stdout.split()]  # type: ignore[misc]


# The trial requeued mid-run in the SLURM test, and the same values run once as a plain job: the reference.
TARGET = {"model.init_args.lr": 0.01, "model.init_args.hidden": 128}
SLURM_SETS = ["trainer.max_epochs=2", "checkpoint.every_n_train_steps=5"]


def _plain_job(workdir: Path, uri: str) -> str:
    """TARGET's values as a single SLURM job (the sweep's spec without `sweep:`), submitted without waiting."""
    raw = yaml.safe_load(Path(SLURM).read_text())
    raw.pop("sweep")
    job = workdir / "plain.yaml"
    job.write_text(yaml.safe_dump(raw))
    res, run_id = submit(workdir / "plain", uri, [*SLURM_SETS, *assignments(TARGET)], job=str(job))
    assert res.returncode == 0 and run_id, res.stdout[-2000:] + res.stderr[-2000:]
    return run_id


@pytest.mark.slurm
def test_slurm_sweep_is_one_array_and_a_requeued_task_resumes_its_trial(slurm_cluster: None, mlflow_server: str,
                                                                       tmp_path: Path) -> None:
    """A 2 x 2 grid as one array (%2): TARGET's trial is requeued mid-run, goes on in its own child run with every
    step once, and its final weights equal those of the same values run uninterrupted as a plain job."""
    uri = mlflow_server
    slow = _slow(0.25)  # 40 steps in 10 s: the requeue window (steps 5..20) is ~4 s, a look below under 1 s
    with ThreadPoolExecutor(1) as pool:  # the plain job's submit alongside the sweep's; it runs beside the array
        submitting = pool.submit(_plain_job, tmp_path, uri)
        parent = _submit(SLURM, tmp_path, uri, ["sweep.space.model.init_args.lr.grid=[0.001, 0.01]",
                                                "sweep.space.model.init_args.hidden.grid=[32, 128]", *SLURM_SETS,
                                                slow])
        plain = submitting.result()
    array = MlflowClient(tracking_uri=uri).get_run(parent).data.tags["trainctl.scheduler_job_id"]
    sweep_dir = Path(MlflowClient(tracking_uri=uri).get_run(parent).data.tags["trainctl.run_dir"])
    most, requeued, deadline = 0, None, time.monotonic() + 600
    while _state(uri, parent) not in ("FINISHED", "FAILED", "KILLED"):
        assert time.monotonic() < deadline, f"the sweep did not end: {_sacct(array)}"
        rows = _sacct(array)  # empty until the accounting daemon has the array
        assert all(job.startswith(f"{array}_") for job, _ in rows), rows  # one array job
        most = max(most, sum(1 for _, state in rows if state == "RUNNING"))
        if requeued is None:  # TARGET's trial mid-run is requeued by SLURM; it goes on in its own run
            for trial in sweep_dir.glob("trials/*/job.json"):
                fixed = json.loads((trial.parent / "params.json").read_text())["params"]
                run_id = json.loads(trial.read_text())["run_id"]
                if fixed == TARGET and 5 <= len(steps(uri, run_id)) <= 20:
                    job = json.loads((trial.parent / "scheduler.json").read_text())["job_id"]
                    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
                    requeued = run_id
                    break
        time.sleep(0.5)
    assert 1 <= most <= 2, most
    assert requeued is not None
    _check_parent_and_children(uri, parent, 4, STEPS)
    tags = MlflowClient(tracking_uri=uri).get_run(requeued).data.tags
    assert int(tags["trainctl.attempt"]) >= 2, tags
    _each_step_once(uri, requeued, STEPS)
    cfg = parse_sweep(json.loads((sweep_dir / "sweep.json").read_text())["sweep"])
    assert len(engine.load(sweep_dir, cfg).trials) == 4  # the requeued trial did not ask again
    assert wait_state(uri, plain, {"FINISHED", "FAILED", "KILLED"}, timeout=300) == "FINISHED"
    assert_same_training_state(final_checkpoint(run_dir(uri, requeued)), final_checkpoint(run_dir(uri, plain)))


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
    assert 2 <= len(_children(uri, parent)) <= 3  # the two that failed, and at most one started meanwhile


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
    parent = _submit(RAY, tmp_path, uri, [f"backend.ray.address={RAY_API}", "trainer.max_epochs=1", _slow(1.5),
                                          "sweep.space.model.init_args.lr.grid=[0.001, 0.003, 0.01]",
                                          "sweep.space.model.init_args.hidden.grid=[32]",
                                          "checkpoint.every_n_train_steps=2"])
    cl = MlflowClient(tracking_uri=uri)
    sweep_dir = Path(cl.get_run(parent).data.tags["trainctl.run_dir"])

    def two_training() -> list[Any]:  # both at once: their jobs start some seconds apart
        kids = _children(uri, parent)
        busy = [k for k in kids if _state(uri, k.info.run_id) == "RUNNING" and steps(uri, k.info.run_id)]
        return kids if len(busy) == 2 else []

    first = _wait("two trials training on Ray at once", two_training, 300, poll=0.5)
    res = run_cli("cancel", parent, "--tracking-uri", uri, timeout=300)
    assert res.returncode == 0 and "no trial of it is left running" in res.stdout, res.stdout + res.stderr
    assert _state(uri, parent) == "KILLED"
    assert {_state(uri, k.info.run_id) for k in first} == {"KILLED"}
    table = json.loads(run_cli("status", parent, "--tracking-uri", uri, "--json").stdout)
    assert table["backend"] == "ray" and table["status"] == "KILLED", table
    assert [r["state"] for r in table["trial_runs"]] == ["KILLED", "KILLED"], table
    jobs = JobSubmissionClient(RAY_API)

    def ours() -> list[Any]:
        return [j for j in jobs.list_jobs() if str((j.metadata or {}).get("trainctl.run_dir", "")).startswith(
            str(sweep_dir))]

    assert len(ours()) == 2 and all(j.status.is_terminal() for j in ours()), [(j.submission_id, j.status)
                                                                              for j in ours()]
    assert len(_children(uri, parent)) == 2

    res = run_cli("resume", parent, "--tracking-uri", uri, "--wait", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _check_parent_and_children(uri, parent, 3, 20)
    for k in first:  # continued in the same child run, from its checkpoint
        assert int(cl.get_run(k.info.run_id).data.tags["trainctl.attempt"]) >= 2
    assert _most_at_once(_attempt_windows(sweep_dir)) <= 2
    ended = ours()  # Ray's own record: 2 stopped jobs, then one per trial resumed or started
    assert len(ended) == 5 and sum(j.status == "SUCCEEDED" for j in ended) == 3, ended
    assert _most_at_once([(j.start_time / 1e3, j.end_time / 1e3) for j in ended]) <= 2
    table = json.loads(run_cli("status", parent, "--tracking-uri", uri, "--json").stdout)
    assert table["trial_runs"][0]["run_id"] == cl.get_run(parent).data.tags["trainctl.best_trial"], table
