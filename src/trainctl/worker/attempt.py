"""Attempts and the requeue-or-end decision, the same on every rank.

Global rank 0 records each attempt (and its cause: timeout, preempted, network, rank-lost, user-error…) in the
run directory and on the MLflow run. The decision at the end is a pure function of the outcome, the restarts
already used and the spec's fault_tolerance policy, so every rank reaches it alone, without a collective.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from trainctl.injob import RankInfo
from trainctl.rundir import atomic_write_text
from trainctl.runstate import CAUSE_FILE, Attempt, Attempts, Cause, Outcome, Verdict, await_attempt, restarts_used
from trainctl.spec import FaultTolerance, OnFailure
from trainctl.worker.outcome import Ending, local_bind_failure


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
    found = await_attempt(run_dir, lambda log: next((a for a in reversed(log) if a.ended is None
                                                     and a.started >= started - 120), None), wait_s, every_s=0.1)
    if found is not None:
        return found
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
    if previous.outcome is Outcome.requeue and previous.reason:
        return previous.reason.split(":", 1)[0]
    if previous.ended is None:
        # The previous attempt never reached a verdict: its processes were killed (node failure, SIGKILL,
        # a manual `scontrol requeue` that outran the signal).
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        return "requeue-or-node-failure" if restarts else "killed-without-verdict"
    return "resume"


def decide(run_dir: Path, attempt: Attempt, policy: FaultTolerance, ending: Ending) -> Verdict:
    """Agreed stops and infrastructure failures are retried while max_restarts lasts (infrastructure failures
    only with on_failure: requeue); the user's own exception ends the run at once unless retry_user_errors
    allows another try. Every rank reaches the same verdict from the same Ending."""
    cause, detail = ending.cause, ending.detail
    if cause is Cause.finished:
        return Verdict(Outcome.finished, "finished", cause)
    if cause is Cause.killed:
        return Verdict(Outcome.killed, detail or "cancelled", cause)
    label = f"{cause.value}: {detail}"
    if cause is Cause.user_error:
        tried = _user_retries_before(run_dir, attempt)
        if tried >= policy.retry_user_errors:
            used_up = f" (retry_user_errors={policy.retry_user_errors} used up)" if policy.retry_user_errors else ""
            return Verdict(Outcome.failed, label + used_up, cause)
    elif cause.infrastructure and policy.on_failure is OnFailure.fail:
        return Verdict(Outcome.failed, label, cause)
    if _restarts_before(run_dir, attempt) >= policy.max_restarts:
        return Verdict(Outcome.failed, f"{cause.value}: max_restarts={policy.max_restarts} used up; last: {detail}",
                       cause)
    return Verdict(Outcome.requeue, label, cause)


def _user_retries_before(run_dir: Path, attempt: Attempt) -> int:
    """Attempts since the first (or a manual resume) that exist because the user's code raised."""
    return restarts_used([*_earlier(run_dir, attempt), attempt], cause=Cause.user_error)


def _restarts_before(run_dir: Path, attempt: Attempt) -> int:
    return restarts_used([*_earlier(run_dir, attempt), attempt])


def _earlier(run_dir: Path, attempt: Attempt) -> list[Attempt]:
    return [a for a in Attempts(run_dir).all() if a.number < attempt.number]


def end(run_dir: Path, attempt: Attempt, verdict: Verdict, step: int | None) -> None:
    attempt.ended = time.time()
    attempt.outcome = verdict.outcome
    attempt.reason = verdict.reason[:2000]
    attempt.step = step
    Attempts(run_dir).save(attempt)


def rank_file(run_dir: Path, attempt: Attempt, rank: int, what: str) -> Path:
    return run_dir / "attempts" / f"{attempt.number:04d}" / f"rank-{rank:04d}.{what}.json"


def mark_rank(run_dir: Path, attempt: Attempt, rank: RankInfo, what: str, detail: str = "",
              ending: Ending | None = None) -> None:
    """Each rank notes its start and end; a rank with a start and no end died without a word (SIGKILL, OOM).
    The end holds the rank's own Ending, so that every rank can tell whose exception ended the attempt."""
    path = rank_file(run_dir, attempt, rank.global_rank, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    record = {"rank": rank.global_rank, "host": node, "pid": os.getpid(), "time": time.time(), "detail": detail[:1000]}
    if ending is not None:
        record.update(cause=ending.cause.value, detail=f"{ending.cause.value} {ending.detail}"[:1000],
                      reason=ending.detail[:1000])
    atomic_write_text(path, json.dumps(record))


def rank_endings(run_dir: Path, attempt: Attempt, world_size: int) -> dict[int, tuple[Ending, float]]:
    """The Ending each rank recorded for this attempt (and when), for the ranks that recorded one."""
    out: dict[int, tuple[Ending, float]] = {}
    folder = rank_file(run_dir, attempt, 0, "end").parent
    for path in folder.glob("rank-*.end.json"):  # one listing: cheap on shared storage, polled by every rank
        try:
            record = json.loads(path.read_text())
            ending = Ending(Cause(record["cause"]), record.get("reason", ""))
            if int(record["rank"]) < world_size:
                out[int(record["rank"])] = ending, float(record["time"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def attempt_ending(run_dir: Path, attempt: Attempt, rank: RankInfo, own: Ending, wait_s: float = 5.0) -> Ending:
    """What ended the attempt, seen from this rank. When one rank raises, its peers see a collective fail
    (a reset connection): the attempt's Ending is then the user's exception (or the watchdog's stall) on that
    rank, whichever rank asks; a peer that vanished without a word (SIGKILL, OOM, node loss) is named as the cause."""
    if own.cause is not Cause.network or local_bind_failure(own):
        return own
    silent = silent_ranks(run_dir, attempt, rank.world_size, wait_s)
    peers = rank_endings(run_dir, attempt, rank.world_size)
    for cause in (Cause.user_error, Cause.stall):  # the first cause, before the failures it set off
        first = sorted(r for r, (e, _) in peers.items() if e.cause is cause)
        if first:
            detail = peers[first[0]][0].detail
            return Ending(cause, detail if cause is Cause.stall else f"rank {first[0]}: {detail}")
    if silent:
        return Ending(Cause.rank_lost, f"{', '.join(silent)} died without reporting; here: {own.detail}")
    return own


def peer_failure(run_dir: Path, attempt: Attempt, rank: RankInfo, grace_s: float) -> Ending | None:
    """A peer that ended this attempt with a failure more than grace_s ago, while this rank is still running
    (waiting on a rendezvous or a collective that will only time out): its Ending, as the attempt's."""
    for r, (ending, at) in sorted(rank_endings(run_dir, attempt, rank.world_size).items()):
        if r != rank.global_rank and ending.failure and time.time() - at > grace_s:
            detail = ending.detail if ending.detail.startswith("rank ") else f"rank {r}: {ending.detail}"
            return Ending(ending.cause, detail)
    return None


def stall_origin(run_dir: Path, attempt: Attempt, rank: RankInfo, own: Ending,
                 wait_s: float = 5.0) -> tuple[int, str, Ending]:
    """(rank, host, ending) of the rank that stopped first, when this rank's watchdog found it stuck. Every
    watchdog uses the same timeout, so the stuck rank and the peers blocked in a collective on it fire within one
    poll of each other, in any order; a blocked peer still beat once more (it finished the step the stuck rank
    never did), so the oldest last beat names the stuck rank."""
    silent_ranks(run_dir, attempt, rank.world_size, wait_s)  # the peers' watchdogs report within one poll
    since: dict[int, tuple[float, str, str]] = {}
    for path in (run_dir / "failures").glob(f"attempt-{attempt.number:04d}-rank-*.json"):
        try:
            record = json.loads(path.read_text())
            since[int(record["rank"])] = (float(record["time"]) - float(record["idle_s"]), record["host"],
                                          record["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not since:
        return rank.global_rank, rank.host, own
    first = min(since, key=lambda r: since[r][0])
    return first, since[first][1], Ending(Cause.stall, since[first][2])


def silent_ranks(run_dir: Path, attempt: Attempt, world_size: int, wait_s: float = 5.0) -> list[str]:
    """Ranks that started this attempt but never reported an end: 'rank R on HOST'. Waits up to wait_s for the
    missing end records first: a stuck rank's watchdog and its peer's collective timeout fire at about the same
    time, and the stuck rank's record names the cause. A rank on this host whose process still runs is not silent,
    only busy (blocked in a collective on a peer that raised)."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = [r for r in range(world_size) if not rank_file(run_dir, attempt, r, "end").exists()]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    gone = [(r, start) for r in missing if not _alive_here(start := _start_record(run_dir, attempt, r))]
    return [f"rank {r} on {start.get('host', '?')}" for r, start in gone]


def _start_record(run_dir: Path, attempt: Attempt, rank: int) -> dict:
    try:
        return json.loads(rank_file(run_dir, attempt, rank, "start").read_text())
    except (OSError, ValueError):
        return {}


def _alive_here(start: dict) -> bool:
    """The rank's process runs on this host (not a zombie)."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if start.get("host") != node or not start.get("pid"):
        return False
    try:
        os.kill(int(start["pid"]), 0)
        stat = Path(f"/proc/{int(start['pid'])}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
