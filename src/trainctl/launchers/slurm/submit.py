"""SLURM backend, submit side: submitit's SlurmExecutor writes one sbatch script; its `srun` starts one task
(rank) per device.

What the script asks for (cluster/slurm/README.md §2 says why):

    --nodes=<resources.nodes> --ntasks-per-node=<resources.devices_per_node>   one task = one rank
    --cpus-per-task --mem --time=<resources.time_min> [--gpus-per-node]
    --signal=USR2@<fault_tolerance.signal_lead_s>   no "B:": the job steps (the ranks) get it, not the batch shell
    --requeue (--no-requeue when max_restarts is 0) --open-mode=append --output/--error=<run dir>/logs/%j_0_log.*
    --job-name=<run dir name>   (<name>-<run id[:8]>: it also tells this run's job from a recycled job id)
    --partition --account --qos --constraint, then backend.slurm.sbatch last

Signals: every rank starts with SIGUSR2 and SIGTERM *blocked* (see `python_command`), so a warning or a
preemption that lands while Python is still importing torch waits instead of killing the rank. The worker
installs its own handlers first thing in `run_rank` (trainctl/injob.py STOP.install: they replace submitit's
USR2 checkpoint-and-requeue handler and its TERM "bypass"), then worker/env.py unblocks both and a pending
signal reaches trainctl's handler. submitit's requeue logic never runs: the worker decides and calls
`requeue_self` (injob.py), which requeues the job under the same id (`scontrol requeue`) and leaves without a result
file, so submitit's client would keep waiting through the requeue.

Quoting: every value that comes from the spec or the run directory reaches the script through submitit's
rendering, which shell-quotes it (`#SBATCH --key=<shlex.quote(value)>`, srun's --output/--error, the folder
of the command); the spec checks also restrict names, partitions and sbatch values to plain characters.
`backend.slurm.setup` lines are the user's own shell lines (`module load …`) and are written verbatim.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainctl.errors import UserError
from trainctl.launchers.base import CancelReport, Say, Submission, poll_until, read_rank_logs
from trainctl.rundir import JobFile, atomic_write_text
from trainctl.runstate import State
from trainctl.spec import Accelerator, Spec

log = logging.getLogger("trainctl.slurm")

WARNING_SIGNAL = "USR2"  # trainctl/injob.py WARNING_SIGNAL; set explicitly, whatever SUBMITIT_PREEMPT_SIGNAL says
CMD_TIMEOUT_S = 20.0

# Every job state SLURM 22.05-24.x prints (squeue %T, sacct State), in trainctl's vocabulary. squeue shows the
# flags (COMPLETING, CONFIGURING, REQUEUED, …) instead of the base state while they are set.
SLURM_STATES: dict[str, State] = {
    # waiting for (or being given) an allocation
    "PENDING": State.PENDING,
    "CONFIGURING": State.PENDING,  # nodes allocated and booting/being set up; the script has not started
    "POWER_UP_NODE": State.PENDING,  # CONFIGURING while powered-down nodes start (power saving)
    "RESV_DEL_HOLD": State.PENDING,  # held because its reservation was deleted; runs once released
    "SUSPENDED": State.PENDING,  # suspended (gang scheduling, admin): resumes later, makes no progress now
    # holding an allocation
    "RUNNING": State.RUNNING,
    "COMPLETING": State.RUNNING,  # processes still ending (after an end, a cancel or a requeue): not final yet
    "SIGNALING": State.RUNNING,  # a signal is being delivered to the job's steps
    "STAGE_OUT": State.RUNNING,  # burst-buffer stage-out after the script ended: the final state follows
    "RESIZING": State.RUNNING,  # the job's size is being changed
    "STOPPED": State.RUNNING,  # SIGSTOPped with its CPUs kept; continues on SIGCONT
    "UPDATE_DB": State.RUNNING,  # a database update (e.g. of its limits) in progress
    "REVOKED": State.RUNNING,  # federation: this sibling was removed because another cluster runs the job
    # coming back
    "REQUEUED": State.REQUEUED,  # requeued (scontrol requeue, node failure, preemption); starts again
    "REQUEUE_FED": State.REQUEUED,  # federation: requeued, being moved back to the origin cluster
    "REQUEUE_HOLD": State.REQUEUED,  # requeued and held: runs again after `scontrol release`
    "SPECIAL_EXIT": State.REQUEUED,  # requeued and held for an exit code the site singles out (RequeueExit)
    "PREEMPTED": State.FAILED,  # ended by preemption, not requeued (a requeued one shows PENDING/REQUEUED)
    "EXPEDITING": State.REQUEUED,  # 23.11+: requeued to be restarted urgently
    # over
    "COMPLETED": State.FINISHED,  # the batch script exited 0; the attempt log says whether training finished
    "FAILED": State.FAILED,
    "TIMEOUT": State.FAILED,  # killed at its time limit and not requeued (trainctl requeues on the warning)
    "NODE_FAIL": State.FAILED,  # a node died and the job was not requeued
    "BOOT_FAIL": State.FAILED,  # a node failed to boot
    "OUT_OF_MEMORY": State.FAILED,
    "DEADLINE": State.FAILED,  # --deadline passed
    "LAUNCH_FAILED": State.FAILED,  # the batch script could not be launched
    "RECONFIG_FAIL": State.FAILED,  # 23.x: node reconfiguration for the job failed
    "CANCELLED": State.KILLED,  # scancel (trainctl cancel, the user, an admin)
}


def map_state(slurm_state: str) -> State:
    """'CANCELLED by 1000', 'CANCELLED+', 'RUNNING' → trainctl's state. Unknown states count as running."""
    words = slurm_state.strip().split()
    base = words[0].rstrip("+").upper() if words else ""
    if base not in SLURM_STATES:
        log.warning("unknown SLURM job state %r: treated as RUNNING", slurm_state)
        return State.RUNNING
    return SLURM_STATES[base]


# ---------------------------------------------------------------- the request


def job_name(run_dir: Path) -> str:
    return run_dir.name


def python_command(python: str) -> str:
    """The interpreter each rank runs, with SIGUSR2/SIGTERM blocked until trainctl's handlers are in place.

    A blocked signal stays pending (an ignored one would be lost) and the mask survives exec, so the real
    interpreter starts with both blocked; worker/env.py unblocks them after STOP.install(). What is left
    unprotected is this stub's own start (`-S`: no site import, ~10 ms) instead of the seconds Python takes
    to import torch and the job's code.
    """
    block = ("import os,signal,sys;signal.pthread_sigmask(signal.SIG_BLOCK,(signal.SIGUSR2,signal.SIGTERM));"
             "os.execv(sys.executable,[sys.executable,*sys.argv[1:]])")
    return f"{shlex.quote(python)} -S -c {shlex.quote(block)}"


def executor_parameters(spec: Spec, run_dir: Path) -> dict[str, Any]:
    """SlurmExecutor.update_parameters(...) for this spec (submitit's names; rendered by _make_sbatch_string)."""
    from submitit.slurm.slurm import _convert_mem

    res, ft, opts = spec.resources, spec.fault_tolerance, spec.backend.slurm
    gpus = opts.gpus_per_node
    if gpus is None and res.accelerator is Accelerator.gpu:
        gpus = res.devices_per_node
    params: dict[str, Any] = {
        "job_name": job_name(run_dir),
        "nodes": res.nodes,
        "ntasks_per_node": res.devices_per_node,
        "cpus_per_task": res.cpus_per_task,
        "mem": _convert_mem(res.mem_gb),
        "time": res.time_min,
        "signal_delay_s": ft.signal_lead_s,
        "wckey": "trainctl",
        "stderr_to_stdout": False,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(opts, key)
        if value:
            params[key] = value
    if opts.setup:
        params["setup"] = list(opts.setup)
    extra: dict[str, Any] = dict(opts.sbatch)
    # Applied last by submitit, so these win over its own defaults.
    extra["signal"] = f"{WARNING_SIGNAL}@{ft.signal_lead_s}"
    extra["requeue" if ft.max_restarts > 0 else "no-requeue"] = True
    params["additional_parameters"] = extra
    return params


def _check_run_dir(run_dir: Path) -> None:
    if "%" in str(run_dir):
        raise UserError.single("workdir", f"the run directory {run_dir} contains '%'",
                               "SLURM reads % in --output/--error as a file name pattern: use a workdir without it")


def render(spec: Spec, run_dir: Path, python: str | None = None) -> str:
    """The exact sbatch script submit sends, rendered by submitit (what SlurmExecutor writes for this spec)."""
    from submitit.slurm.slurm import _make_sbatch_string

    _check_run_dir(run_dir)
    folder = run_dir / "logs"
    command = " ".join([python_command(python or sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **executor_parameters(spec, run_dir))


def make_executor(spec: Spec, run_dir: Path, python: str | None = None) -> Any:
    import submitit

    _check_run_dir(run_dir)
    executor = submitit.SlurmExecutor(folder=run_dir / "logs", python=python_command(python or sys.executable))
    executor.update_parameters(**executor_parameters(spec, run_dir))
    return executor


# ---------------------------------------------------------------- scheduler commands


def run_cmd(*cmd: str, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(cmd), 255, "", f"{type(exc).__name__}: {exc}")


def _expected_name(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "scheduler.json").read_text())["job_name"]
    except (OSError, ValueError, KeyError):
        return job_name(run_dir)


def slurm_view(job_id: str, name: str | None = None) -> tuple[str, str] | None:
    """(where, raw state): ("live", …) from squeue (which also lists jobs that ended a moment ago),
    ("ended", …) from sacct once the controller has forgotten the job, ("unreachable", <sacct's state or "">)
    when the controller does not answer. None when nobody knows the job, or its id now names another job
    (job ids restart on a fresh cluster: the job name, the run directory's name, tells them apart)."""
    sq = run_cmd("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T|%j")
    if sq.returncode == 0 and sq.stdout.strip():
        state, _, got = sq.stdout.strip().splitlines()[0].partition("|")
        return None if name and got != name else ("live", state)
    where = "unreachable" if sq.returncode != 0 and "Invalid job id" not in sq.stderr else "ended"
    ac = run_cmd("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,JobName")
    rows = [r.split("|") for r in ac.stdout.strip().splitlines() if r.strip()] if ac.returncode == 0 else []
    if not rows:
        return ("unreachable", "") if where == "unreachable" else None
    state, got = rows[-1][0], rows[-1][1] if len(rows[-1]) > 1 else ""
    return None if name and got != name else (where, state)


class SlurmLauncher:
    kind = "slurm"
    poll_s = 0.5  # squeue/sacct on a shared controller

    def rendezvous_port(self) -> int:
        return 0  # worker/env.py job_master_port: from the job id and the restart count

    def dry_run(self, spec: Spec, run_dir: Path) -> str:
        return render(spec, run_dir)

    def submit(self, spec: Spec, run_dir: Path, job: JobFile) -> Submission:
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise UserError.single("backend.kind", "slurm: sbatch/srun not found on this machine",
                                   "submit from a SLURM login node, or start the local cluster: make cluster-up")
        from trainctl.launchers.slurm.injob import run_rank

        executor = make_executor(spec, run_dir)
        sub = executor.submit(run_rank, str(run_dir))
        atomic_write_text(run_dir / "scheduler.json", json.dumps({
            "job_id": str(sub.job_id), "job_name": job_name(run_dir), "submitted": time.time()}))
        res = spec.resources
        where = f"partition {spec.backend.slurm.partition}" if spec.backend.slurm.partition else "default partition"
        return Submission(str(sub.job_id), f"SLURM job {sub.job_id}: {res.nodes} node(s) x "
                          f"{res.devices_per_node} task(s), {where}; logs in {run_dir / 'logs'}")

    def status(self, run_dir: Path, scheduler_job_id: str) -> State | None:
        """Live job: its state. Ended: KILLED when it was cancelled, else None (the attempt log decides)."""
        seen = slurm_view(scheduler_job_id, _expected_name(run_dir))
        if seen is None:
            return None
        where, raw = seen
        if where == "unreachable" and not raw:
            log.warning("SLURM does not answer (squeue/sacct): job %s treated as still running", scheduler_job_id)
            return State.RUNNING
        state = map_state(raw)
        if where == "ended" or state.terminal:
            return State.KILLED if state is State.KILLED else None
        return state

    def logs(self, run_dir: Path, scheduler_job_id: str) -> dict[str, str]:
        return read_rank_logs(run_dir / "logs")

    def cancel(self, run_dir: Path, scheduler_job_id: str, grace_s: float, say: Say) -> CancelReport:
        """scancel: SLURM sends every task SIGTERM (trainctl's stop path: the ranks save their current step and
        end, never requeueing a cancelled job) and SIGKILL after its KillWait. Then wait (up to grace_s) until
        SLURM holds no process of the job: it leaves squeue, or shows a final state."""
        report = CancelReport(say)
        name = _expected_name(run_dir)
        seen = slurm_view(scheduler_job_id, name)
        if not _live(seen):  # gone, over, or the id is someone else's job now
            report.step(f"SLURM job {scheduler_job_id} was no longer running")
            return report
        res = run_cmd("scancel", scheduler_job_id)
        over = ("already completing or completed", "Invalid job id")
        if res.returncode != 0 and not any(s in res.stderr for s in over):
            raise UserError.single("RUN_ID", f"scancel {scheduler_job_id} failed: {res.stderr.strip()}",
                                   "is the SLURM controller reachable from here?")
        report.step(f"scancel {scheduler_job_id}: SLURM sends the ranks SIGTERM (each saves its current step and "
                    f"ends), SIGKILL after its KillWait; waiting up to {grace_s:.0f} s for the job to end")
        t0 = time.monotonic()
        seen = poll_until(lambda: slurm_view(scheduler_job_id, name), lambda s: not _live(s), grace_s, self.poll_s)
        if seen is not None and _live(seen):
            report.left = [f"SLURM job {scheduler_job_id} ({seen[1] or 'state unknown'}): see squeue -j "
                           f"{scheduler_job_id}"]
        else:
            report.step(f"SLURM job {scheduler_job_id} ended ({seen[1] if seen else 'gone'}) in "
                        f"{time.monotonic() - t0:.1f} s")
        return report


def _live(seen: tuple[str, str] | None) -> bool:
    """SLURM still holds processes of the job: squeue shows COMPLETING until the last task is gone, then the
    final state (CANCELLED)."""
    return seen is not None and seen[0] != "ended" and not (seen[1] and map_state(seen[1]).terminal)


LAUNCHER = SlurmLauncher()
