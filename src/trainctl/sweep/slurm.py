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

from trainctl.errors import UserError
from trainctl.launchers.base import Say, poll_until
from trainctl.rundir import atomic_write_text
from trainctl.spec import Spec


def render(spec: Spec, sweep_dir: Path, count: int, max_concurrent: int) -> str:
    """The sbatch script of the array, as submitit writes it."""
    from submitit.slurm.slurm import _make_sbatch_string

    from trainctl.launchers.slurm.submit import executor_parameters, python_command

    folder = sweep_dir / "logs"
    command = " ".join([python_command(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=count,
                               array_parallelism=max_concurrent, **executor_parameters(spec, sweep_dir))


def submit(spec: Spec, sweep_dir: Path, indices: list[int], max_concurrent: int) -> str:
    """Submit the trials `indices` as one array; returns the array's job id."""
    import submitit

    from trainctl.launchers.slurm.submit import executor_parameters, python_command
    from trainctl.sweep.trial import run_trial

    executor = submitit.SlurmExecutor(folder=sweep_dir / "logs", python=python_command(sys.executable))
    executor.update_parameters(**executor_parameters(spec, sweep_dir), array_parallelism=max_concurrent)
    jobs = executor.map_array(run_trial, [str(sweep_dir)] * len(indices), indices)
    array = str(jobs[0].job_id).split("_")[0]
    atomic_write_text(sweep_dir / "scheduler.json", json.dumps({
        "job_id": array, "job_name": sweep_dir.name, "submitted": time.time(),
        "tasks": {str(i): f"{array}_{n}" for n, i in enumerate(indices)}}))
    return array


def cancel(array: str, grace_s: float, say: Say) -> list[str]:
    """scancel the whole array (running and pending tasks), then wait (up to grace_s) until SLURM holds none of its
    tasks: every task leaves squeue or shows a final state. Returns the tasks still there."""
    from trainctl.launchers.slurm.submit import map_state, run_cmd

    res = run_cmd("scancel", array)
    if res.returncode != 0 and "Invalid job id" not in res.stderr:
        raise UserError.single("RUN_ID", f"scancel {array} failed: {res.stderr.strip()}",
                               "is the SLURM controller reachable from here?")
    say(f"scancel {array}: SLURM sends every running trial's ranks SIGTERM (each saves its step and ends) and drops "
        f"the pending ones; waiting up to {grace_s:.0f} s for the array to end")

    def live() -> list[str]:
        out = run_cmd("squeue", "-h", "--states=all", "-j", array, "-o", "%i %T")
        rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
        return [f"{r[0]} {r[1]}" for r in rows if len(r) == 2 and not map_state(r[1]).terminal]

    t0 = time.monotonic()
    left = poll_until(live, lambda rows: not rows, grace_s, 0.5)
    if not left:
        say(f"SLURM array {array} ended in {time.monotonic() - t0:.1f} s")
    return [f"SLURM task {row}: see squeue -j {array}" for row in left]
