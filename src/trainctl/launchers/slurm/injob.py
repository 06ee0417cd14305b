"""SLURM backend, in-job side: submitit's callable on every rank, the requeue (`scontrol requeue`) and the
cancelled check, which asks SLURM's accounting first and then the run's state."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from trainctl.injob import STOP, RankInfo, run_killed
from trainctl.launchers.slurm.submit import map_state, run_cmd
from trainctl.rundir import JobFile
from trainctl.runstate import Attempt, Attempts, State, await_attempt
from trainctl.worker import entrypoint

REQUEUE_EXIT_CODE = 144  # any non-zero code: no result file is written; SLURM is restarting the job anyway
PEER_GRACE_S = 60.0  # after an agreed stop, how long other ranks leave global rank 0 to record, upload, requeue


def _cancelled(job_id: str) -> str | None:
    """Why this job must not be requeued: the run marked KILLED (trainctl cancel), or cancelled in SLURM."""
    run_dir = _run_dir()
    return cancelled(JobFile.read(run_dir), job_id) if run_dir else _scancelled(job_id)


def _scancelled(job_id: str) -> str | None:
    """SLURM's accounting calls the job cancelled (scancel): `scontrol requeue` would bring it back."""
    ac = run_cmd("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
    first = ac.stdout.strip().splitlines()[:1]
    if first and map_state(first[0]) is State.KILLED:
        return f"cancelled by the scheduler (SLURM job {job_id} is {first[0]})"
    return None


def cancelled(job: JobFile, job_id: str | None = None) -> str | None:
    """Inside a rank, after a stop signal: why the job ends here instead of requeueing (None: requeue). SLURM's
    view first (it answers at once); MLflow's KILLED then names a trainctl cancel, asked only briefly when SLURM
    already said (KillWait is short) and long enough to ride out a slow server when it did not."""
    job_id = os.environ.get("SLURM_JOB_ID", "") if job_id is None else job_id
    in_slurm = _scancelled(job_id) if job_id else None
    return run_killed(job.tracking_uri, job.run_id, wait_s=2.0 if in_slurm else 10.0) or in_slurm


def _run_dir() -> Path | None:
    folder = os.environ.get("SUBMITIT_FOLDER")  # <run dir>/logs
    return Path(folder).parent if folder else None


def _ended_otherwise(log: list[Attempt]) -> str | None:
    """Global rank 0's verdict for this attempt, when it is not a requeue (then no rank requeues)."""
    last = log[-1] if log else None
    if last is not None and last.closed_otherwise and last.outcome is not None:
        return f"rank 0 ended the attempt {last.outcome.value}"
    return None


def _rank_zero_ended_otherwise() -> str | None:
    run_dir = _run_dir()
    try:
        return _ended_otherwise(Attempts(run_dir).all()) if run_dir else None
    except (OSError, ValueError, TypeError):
        return None


def _await_requeue(grace_s: float) -> bool:
    """Wait (up to grace_s) for the SIGTERM that SLURM sends every task when the job is requeued (by rank 0),
    preempted, cancelled or killed at its limit. True if one came (also before this call) or rank 0 ended
    the attempt without a requeue."""
    got: list[int] = []
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM,))

    def heard(log: list[Attempt]) -> bool | None:  # STOP heard the SIGTERMs that came before
        return True if got or "SIGTERM" in STOP.events or _ended_otherwise(log) else None

    return await_attempt(_run_dir(), heard, grace_s) is not None


def _leave(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"trainctl: {message}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def requeue_self(rank: RankInfo) -> NoReturn:
    """Requeue this job under the same id (`scontrol requeue`), then leave without a result file.

    Any rank may requeue (global rank 0 may be on a dead node); a second `scontrol requeue` fails harmlessly.
    Global rank 0 requeues as soon as it has recorded the verdict and closed the MLflow run. A requeue
    SIGTERMs every task and SIGKILLs it KillWait seconds later, so after an agreed stop (a signal) the other
    ranks do not requeue first: they wait up to PEER_GRACE_S for that SIGTERM (or leave at once if one came
    already: SLURM is ending the attempt), and requeue only if none comes (rank 0 is gone). After a crash
    they requeue at once (rank 0 may be stuck in a collective waiting for them). Nobody requeues a cancelled
    job (`scontrol requeue` would bring a scancelled job back), nor an attempt rank 0 ended otherwise.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id:
        _leave(REQUEUE_EXIT_CODE, "requeue wanted but SLURM_JOB_ID is not set")
    if rank.global_rank != 0 and STOP.requested and _await_requeue(PEER_GRACE_S):
        why_not = _rank_zero_ended_otherwise()
        _leave(1 if why_not else REQUEUE_EXIT_CODE, why_not or "SLURM is ending this attempt (SIGTERM): "
                                                                "rank 0 requeues it if SLURM does not")
    why_not = (_rank_zero_ended_otherwise() if rank.global_rank != 0 else None) or _cancelled(job_id)
    if why_not:
        _leave(1, f"not requeueing: {why_not}")
    res = run_cmd("scontrol", "requeue", job_id, timeout=60)
    if res.returncode == 0:
        _leave(REQUEUE_EXIT_CODE, f"rank {rank.global_rank} requeued SLURM job {job_id}")
    # Another rank (or SLURM itself, after a node failure) got there first, or the site forbids it.
    _leave(REQUEUE_EXIT_CODE, f"rank {rank.global_rank}: scontrol requeue {job_id} failed "
                              f"({res.returncode}): {res.stderr.strip()}")


class SlurmInJob:
    def requeue_self(self, rank: RankInfo) -> NoReturn:
        requeue_self(rank)

    def cancelled(self, job: JobFile) -> str | None:
        return cancelled(job)


def run_rank(run_dir: str) -> str:
    """submitit's callable on every rank of a SLURM job."""
    return entrypoint.run_rank(run_dir, SlurmInJob())
