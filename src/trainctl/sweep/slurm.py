"""A sweep on SLURM: one job array through submitit, `max_concurrent` as its `%K` throttle, one task per trial.

Each array task is a trial with the spec's resources (its ranks are the task's srun tasks). A requeue of a task
(`scontrol requeue`, preemption, trainctl's own requeue) restarts that task only; it finds its trial's job.json
and resumes in the trial's own child run. A resume of the sweep submits a new array over the unfinished trials.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from trainctl.rundir import atomic_write_text
from trainctl.spec import Spec
from trainctl.sweep.layout import trial_dir


def render(spec: Spec, sweep_dir: Path, count: int, max_concurrent: int) -> str:
    """The sbatch script of the array, as submitit writes it."""
    from submitit.slurm.slurm import _make_sbatch_string

    from trainctl.launchers.slurm import _python_command, executor_parameters

    folder = sweep_dir / "logs"
    command = " ".join([_python_command(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=count,
                               array_parallelism=max_concurrent, **executor_parameters(spec, sweep_dir))


def submit(spec: Spec, sweep_dir: Path, indices: list[int], max_concurrent: int) -> str:
    """Submit the trials `indices` as one array; returns the array's job id."""
    import submitit

    from trainctl.launchers.slurm import _python_command, executor_parameters
    from trainctl.sweep.trial import run_trial

    executor = submitit.SlurmExecutor(folder=sweep_dir / "logs", python=_python_command(sys.executable))
    executor.update_parameters(**executor_parameters(spec, sweep_dir), array_parallelism=max_concurrent)
    jobs = executor.map_array(run_trial, [str(sweep_dir)] * len(indices), indices)
    array = str(jobs[0].job_id).split("_")[0]
    atomic_write_text(sweep_dir / "scheduler.json", json.dumps({
        "job_id": array, "job_name": sweep_dir.name, "submitted": time.time(),
        "tasks": {str(i): f"{array}_{n}" for n, i in enumerate(indices)}}))
    for i in indices:
        trial_dir(sweep_dir, i).mkdir(parents=True, exist_ok=True)
    return array
