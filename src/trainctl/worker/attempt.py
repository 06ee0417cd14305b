"""Attempts and the requeue-or-end decision, the same on every rank.

Global rank 0 records each attempt (and its cause: timeout, preempted, crash, node-failure…) in the run
directory and on the MLflow run. The decision at the end is a pure function of the outcome, the restarts
already used and the spec's fault_tolerance policy, so every rank reaches it alone, without a collective.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from trainctl.rundir import Attempt, Attempts
from trainctl.spec import FaultTolerance, OnFailure
from trainctl.worker.env import RankInfo

CAUSE_FILE = "next-cause"  # written by `trainctl resume` for the attempt it starts


class Outcome(str, Enum):
    finished = "finished"
    requeue = "requeue"
    failed = "failed"
    killed = "killed"


@dataclass
class Verdict:
    outcome: Outcome
    reason: str


def begin(run_dir: Path, rank: RankInfo, wait_s: float = 60.0) -> Attempt:
    """Rank 0 records a new attempt; the other ranks wait for that record (or give up and guess)."""
    attempts = Attempts(run_dir)
    if rank.global_rank == 0:
        previous = attempts.all()
        cause = _cause(run_dir, previous[-1] if previous else None)
        attempt = Attempt(number=len(previous) + 1, started=time.time(), host=rank.host,
                          scheduler_job_id=rank.scheduler_job_id, cause=cause)
        attempts.save(attempt)
        return attempt
    started = time.time()
    since = started - 120
    while time.time() - started < wait_s:
        open_ = [a for a in attempts.all() if a.ended is None and a.started >= since]
        if open_:
            return open_[-1]
        time.sleep(0.1)
    previous = attempts.all()
    return Attempt(len(previous) + 1, started, rank.host, rank.scheduler_job_id, cause="unknown")


def _cause(run_dir: Path, previous: Attempt | None) -> str:
    marker = run_dir / "attempts" / CAUSE_FILE
    if marker.is_file():
        cause = marker.read_text().strip() or "resume"
        marker.unlink()
        return cause
    if previous is None:
        return "first"
    if previous.outcome == Outcome.requeue.value and previous.reason:
        return previous.reason.split(":", 1)[0]
    if previous.ended is None:
        # The previous attempt never reached a verdict: its processes were killed (node failure, SIGKILL,
        # a manual `scontrol requeue` that outran the signal).
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        return "requeue-or-node-failure" if restarts else "killed-without-verdict"
    return "resume"


def decide(run_dir: Path, attempt: Attempt, policy: FaultTolerance, kind: str, detail: str) -> Verdict:
    """kind: finished | stop:<cause> | crash | killed."""
    if kind == "finished":
        return Verdict(Outcome.finished, "finished")
    if kind == "killed":
        return Verdict(Outcome.killed, detail or "cancelled")
    used = _restarts_before(run_dir, attempt)
    retryable = kind.startswith("stop:") or policy.on_failure is OnFailure.requeue
    cause = kind.removeprefix("stop:")
    if not retryable:
        return Verdict(Outcome.failed, f"crash: {detail}")
    if used >= policy.max_restarts:
        return Verdict(Outcome.failed, f"{cause}: max_restarts={policy.max_restarts} used up; last: {detail}")
    return Verdict(Outcome.requeue, f"{cause}: {detail}")


def _restarts_before(run_dir: Path, attempt: Attempt) -> int:
    earlier = [a for a in Attempts(run_dir).all() if a.number < attempt.number]
    used = 0
    for a in [*earlier, attempt]:
        used = 0 if a.cause in ("first", "resume") else used + 1
    return used


def end(run_dir: Path, attempt: Attempt, verdict: Verdict, step: int | None) -> None:
    attempt.ended = time.time()
    attempt.outcome = verdict.outcome.value
    attempt.reason = verdict.reason[:2000]
    attempt.step = step
    Attempts(run_dir).save(attempt)


def rank_file(run_dir: Path, attempt: Attempt, rank: int, what: str) -> Path:
    return run_dir / "attempts" / f"{attempt.number:04d}" / f"rank-{rank:04d}.{what}.json"


def mark_rank(run_dir: Path, attempt: Attempt, rank: RankInfo, what: str, detail: str = "") -> None:
    """Each rank notes its start and end; a rank with a start and no end died without a word (SIGKILL, OOM)."""
    path = rank_file(run_dir, attempt, rank.global_rank, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    path.write_text(json.dumps({"rank": rank.global_rank, "host": node, "pid": os.getpid(), "time": time.time(),
                                "detail": detail[:1000]}))


def silent_ranks(run_dir: Path, attempt: Attempt, world_size: int, wait_s: float = 5.0) -> list[str]:
    """Ranks that started this attempt but never reported an end: 'rank R on HOST'."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = [r for r in range(world_size) if not rank_file(run_dir, attempt, r, "end").exists()]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out = []
    for r in missing:
        start = rank_file(run_dir, attempt, r, "start")
        host = json.loads(start.read_text())["host"] if start.exists() else "?"
        out.append(f"rank {r} on {host}")
    return out
