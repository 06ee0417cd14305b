"""A SLURM sweep as one job array with a task requeued mid-run: its trial goes on in its own run and ends with the
weights of the same values run uninterrupted; the real SLURM cluster, a real MLflow server, real Optuna."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from helpers import (
    assert_same_training_state,
    final_checkpoint,
    run_dir,
    steps,
    submit,
    wait_state,
)
from mlflow import MlflowClient
from sweep_helpers import (
    check_parent_and_children,
    each_step_once,
    slow_steps,
    state_of,
    submit_sweep,
)

from trainctl.sweep import engine
from trainctl.sweep.space import assignments, parse_sweep

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

SLURM = "jobs/digits-sweep-slurm.yaml"
STEPS = 40  # 2 epochs x 20 steps of digits on one rank


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
    slow = slow_steps(0.25)  # 40 steps in 10 s: the requeue window (steps 5..20) is ~4 s, a look below under 1 s
    with ThreadPoolExecutor(1) as pool:  # the plain job's submit alongside the sweep's; it runs beside the array
        submitting = pool.submit(_plain_job, tmp_path, uri)
        parent = submit_sweep(SLURM, tmp_path, uri, ["sweep.space.model.init_args.lr.grid=[0.001, 0.01]",
                                                "sweep.space.model.init_args.hidden.grid=[32, 128]", *SLURM_SETS,
                                                slow])
        plain = submitting.result()
    array = MlflowClient(tracking_uri=uri).get_run(parent).data.tags["trainctl.scheduler_job_id"]
    sweep_dir = Path(MlflowClient(tracking_uri=uri).get_run(parent).data.tags["trainctl.run_dir"])
    most, requeued, deadline = 0, None, time.monotonic() + 600
    while state_of(uri, parent) not in ("FINISHED", "FAILED", "KILLED"):
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
    check_parent_and_children(uri, parent, 4, STEPS)
    tags = MlflowClient(tracking_uri=uri).get_run(requeued).data.tags
    assert int(tags["trainctl.attempt"]) >= 2, tags
    each_step_once(uri, requeued, STEPS)
    cfg = parse_sweep(json.loads((sweep_dir / "sweep.json").read_text())["sweep"])
    assert len(engine.load(sweep_dir, cfg).trials) == 4  # the requeued trial did not ask again
    assert wait_state(uri, plain, {"FINISHED", "FAILED", "KILLED"}, timeout=300) == "FINISHED"
    assert_same_training_state(final_checkpoint(run_dir(uri, requeued)), final_checkpoint(run_dir(uri, plain)))

