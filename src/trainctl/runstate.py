"""A run's state, in one place: the states and outcomes, the attempt log, the outcome → state mapping, restart
counting and the wait for global rank 0's record. (tracking.set_state is the one writer of the `trainctl.state`
tag.)

Both sides use it: the CLI (submit, status, cancel, resume) and the ranks (the verdict, the Ray driver). It imports
nothing but rundir: `status` answers without MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TypeVar

from trainctl.rundir import atomic_write_text

STATE_TAG = "trainctl.state"
REASON_TAG = "trainctl.reason"
T = TypeVar("T")


class State(str, Enum):
    """The job's state, the tag `trainctl.state`; MLflow's own status follows it (RUNNING until a final one)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    REQUEUED = "REQUEUED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def terminal(self) -> bool:
        return self in (State.FINISHED, State.FAILED, State.KILLED)


class Cause(str, Enum):
    """Why an attempt ended; its value is also the next attempt's cause in attempts/ and on the run."""

    finished = "finished"
    timeout = "timeout"  # the scheduler's warning before the time limit (SIGUSR2)
    preempted = "preempted"  # SIGTERM: preemption, or a requeue from outside
    rank_lost = "rank-lost"  # a peer vanished without a word: SIGKILL, OOM, node loss
    network = "network"  # rendezvous or collective network error: EADDRINUSE, a reset connection
    stall = "stall"  # the watchdog ended a rank that made no progress
    user_error = "user-error"  # an exception raised from the user's code
    killed = "killed"  # a user's cancel

    @property
    def stop(self) -> bool:
        """An agreed stop: every rank saved the same step."""
        return self in (Cause.timeout, Cause.preempted)

    @property
    def infrastructure(self) -> bool:
        return self in (Cause.rank_lost, Cause.network, Cause.stall)


class Outcome(str, Enum):
    """How an attempt ended, as decided by every rank alone (worker/attempt.py decide)."""

    finished = "finished"
    requeue = "requeue"
    failed = "failed"
    killed = "killed"

    def __str__(self) -> str:  # shown as written in attempts/ and on the run: "requeue"
        return self.value

    __format__ = str.__format__


STATE_AFTER = {Outcome.finished: State.FINISHED, Outcome.requeue: State.REQUEUED, Outcome.failed: State.FAILED,
               Outcome.killed: State.KILLED}

CAUSE_FILE = "next-cause"  # in attempts/: written by `trainctl resume`, the cause of the attempt it starts
# Causes that open a fresh count of restarts: the job's first attempt, and a manual `trainctl resume`.
FRESH_STARTS = ("first", "resume")


@dataclass
class Verdict:
    outcome: Outcome
    reason: str  # "<cause>: <detail>"; the next attempt's cause is the part before the colon
    cause: Cause | None = None


@dataclass
class Attempt:
    number: int
    started: float
    host: str
    scheduler_job_id: str
    cause: str  # why this attempt exists: first, resume, or how the one before ended (a Cause's value)
    ended: float | None = None
    outcome: Outcome | None = None
    reason: str | None = None
    step: int | None = None

    @property
    def closed_otherwise(self) -> bool:
        """Global rank 0 closed this attempt with an outcome other than a requeue: no rank requeues it."""
        return self.ended is not None and self.outcome not in (None, Outcome.requeue)


class Attempts:
    """The attempt log (<run dir>/attempts/NNNN.json), written by global rank 0 (and by a cancel, after the job)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "attempts"

    def all(self) -> list[Attempt]:
        if not self.dir.is_dir():
            return []
        known = {f.name for f in fields(Attempt)}
        items = []
        for p in sorted(self.dir.glob("*.json")):
            data = {k: v for k, v in json.loads(p.read_text()).items() if k in known}
            data["outcome"] = Outcome(data["outcome"]) if data.get("outcome") else None
            items.append(Attempt(**data))
        return sorted(items, key=lambda a: a.number)

    def last(self) -> Attempt | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, attempt: Attempt) -> None:
        atomic_write_text(self.dir / f"{attempt.number:04d}.json", json.dumps(asdict(attempt), indent=2))


def state_after(outcome: Outcome) -> State:
    """The run's state once an attempt ended this way."""
    return STATE_AFTER[outcome]


def restarts_used(attempts: Iterable[Attempt], cause: Cause | None = None) -> int:
    """Of these attempts (in order), how many since the last fresh start (first, resume) exist because of a fault;
    with `cause`, only those that one caused (retry_user_errors counts Cause.user_error)."""
    used = 0
    for a in attempts:
        used = 0 if a.cause in FRESH_STARTS else used + (cause is None or a.cause == cause.value)
    return used


def await_attempt(run_dir: Path | None, pick: Callable[[list[Attempt]], T | None], wait_s: float,
                  every_s: float = 0.2) -> T | None:
    """Ranks other than global rank 0: wait (up to wait_s) until rank 0's attempt log holds what `pick` finds
    in it (not None); return that, or None when the wait ran out. No run_dir: the log is empty."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = pick(Attempts(run_dir).all() if run_dir else [])
        except (OSError, ValueError, TypeError):  # a record being replaced, or a foreign file
            found = None
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(every_s)


def state_of(tags: dict[str, str], status: str) -> State:
    """The job's state: its tag, else MLflow's status of the run."""
    tag = tags.get(STATE_TAG)
    if tag in State.__members__:
        return State(tag)
    return {"FINISHED": State.FINISHED, "FAILED": State.FAILED, "KILLED": State.KILLED}.get(status, State.RUNNING)


def ended_state(seen: State | None, last: Attempt | None) -> tuple[State, str]:
    """(state, reason) of a run whose job the scheduler no longer runs: `seen` is the scheduler's final word (None:
    it no longer knows the job), `last` the job's last attempt record (None: no rank wrote one)."""
    if seen is State.KILLED:
        return State.KILLED, "cancelled by the scheduler"
    if last and last.outcome is Outcome.finished:
        return State.FINISHED, "finished"
    if last and last.outcome not in (None, Outcome.requeue):
        return state_after(last.outcome), last.reason or ""
    why = last.reason if last and last.reason else "its processes died without a verdict"
    return State.FAILED, f"job ended without finishing: {why}"
