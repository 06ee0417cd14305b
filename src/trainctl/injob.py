"""What every rank shares, whatever its backend: its RankInfo, the stop flag, and the backend's in-job side.

The worker (worker/) and each backend's in-job module (launchers/<backend>/injob.py) both import this module; the
backend imports the worker, never the reverse: its entry function (submitit's callable, Ray Train's train
function) calls the worker and hands it the backend's `InJob`, the only backend code the worker calls.

The stop flag is the one owner of the preemption signals on every rank.

SIGUSR2 (the scheduler's warning before a time limit) and SIGTERM (preemption, requeue, or a cancel) only set a
flag here; the ranks agree at the next step boundary (callbacks/preemption.py), save that step together and
leave with a "requeue me" outcome, or, when the job was cancelled (the run is KILLED, or SLURM cancelled it),
end it `killed`: the worker asks its backend (`InJob.cancelled(job)`) before its verdict. Installing these handlers
inside the job's callable replaces submitit's own USR2/TERM handlers; callbacks/preemption.py re-installs them
after Lightning registers its SIGTERM handler.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, NoReturn, Protocol

from trainctl.runstate import Cause, State

if TYPE_CHECKING:
    from trainctl.rundir import JobFile

WARNING_SIGNAL = signal.SIGUSR2


@dataclass
class StopRequest:
    signum: int | None = None
    received_at: float | None = None
    events: list[str] = field(default_factory=list)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def cause(self) -> Cause:
        """The scheduler's warning is a time limit; SIGTERM (or anything else) a preemption."""
        return Cause.timeout if self.signum == WARNING_SIGNAL else Cause.preempted

    def handler(self, signum: int, frame: FrameType | None) -> None:
        # Async-signal context: set plain attributes only, no I/O, no collectives.
        if self.signum is None:
            self.signum = signum
            self.received_at = time.time()
        self.events.append(signal.Signals(signum).name)

    def heard_from_peer(self, signum: int) -> None:
        """Another rank received the signal: this rank stops for the same cause."""
        self.signum = signum
        self.received_at = time.time()
        self.events.append(f"peer:{signal.Signals(signum).name}")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Ray runs the train function in a thread; its setup hook installs in the main thread
        for sig in (WARNING_SIGNAL, signal.SIGTERM):
            signal.signal(sig, self.handler)


STOP = StopRequest()


@dataclass(frozen=True)
class RankInfo:
    global_rank: int
    local_rank: int
    world_size: int
    node_rank: int
    num_nodes: int
    host: str
    scheduler_job_id: str


class InJob(Protocol):
    """A backend's side inside the job: what a rank asks of it at the end of an attempt."""

    def requeue_self(self, rank: RankInfo) -> NoReturn:
        """Have the scheduler run the job again (same run, next attempt); never returns."""
        ...

    def cancelled(self, job: JobFile) -> str | None:
        """After a stop signal: why the job ends here instead of requeueing (None: requeue)."""
        ...


def short_mlflow_requests() -> None:
    """In a rank or the Ray driver: MLflow's client retries one request for up to ~4 minutes; the metrics sink
    retries by itself, so each request stays short and trainctl's own loops (the sink's backoff, set_state's
    retry_s) decide how long to keep trying. Not at import: the CLI's own MLflow calls keep their retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def run_killed(tracking_uri: str, run_id: str, wait_s: float = 10.0) -> str | None:
    """Why the job must end here rather than requeue, when `trainctl cancel` marked the run KILLED.

    Asked in a thread and given up after `wait_s`: with MLflow down, its client retries for minutes.
    """
    answer: list[str] = []

    def ask() -> None:
        from trainctl import tracking

        if tracking.current_state(tracking_uri, run_id) is State.KILLED:
            answer.append("the run is KILLED (trainctl cancel)")

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout=wait_s)
    return answer[0] if answer else None
