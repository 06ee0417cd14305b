"""The requeue-or-end decision: a pure function of how the attempt ended, the restarts used and the policy."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from trainctl.injob import RankInfo
from trainctl.runstate import Attempt, Attempts, Cause, Outcome
from trainctl.spec import FaultTolerance, OnFailure
from trainctl.worker.attempt import attempt_ending, decide, mark_rank, peer_failure, rank_file
from trainctl.worker.outcome import Ending

USER = Ending(Cause.user_error, "ValueError: bad (at my_model.py:12 in training_step)")
NETWORK = Ending(Cause.network, "DistNetworkError: Connection reset by peer")


def _attempts(run_dir: Path, causes: list[str]) -> Attempt:
    store = Attempts(run_dir)
    for i, cause in enumerate(causes, 1):
        store.save(Attempt(i, time.time(), "h", "1", cause))
    return store.all()[-1]


def _rank(r: int, world: int = 2) -> RankInfo:
    return RankInfo(global_rank=r, local_rank=r, world_size=world, node_rank=0, num_nodes=1, host="h",
                    scheduler_job_id="1")


def test_signals_requeue_until_max_restarts(tmp_path: Path) -> None:
    policy = FaultTolerance(max_restarts=2)
    first = _attempts(tmp_path, ["first"])
    assert decide(tmp_path, first, policy, Ending(Cause.timeout)).outcome is Outcome.requeue
    last = _attempts(tmp_path, ["first", "timeout", "preempted"])
    verdict = decide(tmp_path, last, policy, Ending(Cause.timeout, "x"))
    assert verdict.outcome is Outcome.failed and "max_restarts=2" in verdict.reason


def test_user_errors_fail_at_once_infrastructure_is_retried(tmp_path: Path) -> None:
    first = _attempts(tmp_path, ["first"])
    verdict = decide(tmp_path, first, FaultTolerance(), USER)
    assert verdict.outcome is Outcome.failed and verdict.cause is Cause.user_error
    assert verdict.reason == f"user-error: {USER.detail}", "the reason names the exception and the user's frame"
    for cause in (Cause.network, Cause.rank_lost, Cause.stall):
        verdict = decide(tmp_path, first, FaultTolerance(), Ending(cause, "d"))
        assert verdict.outcome is Outcome.requeue and verdict.reason == f"{cause.value}: d"
        assert decide(tmp_path, first, FaultTolerance(on_failure=OnFailure.fail), Ending(cause)).outcome \
            is Outcome.failed
    assert decide(tmp_path, first, FaultTolerance(), Ending(Cause.finished)).outcome is Outcome.finished
    assert decide(tmp_path, first, FaultTolerance(), Ending(Cause.killed)).outcome is Outcome.killed


def test_retry_user_errors_is_an_opt_in_with_its_own_count(tmp_path: Path) -> None:
    policy = FaultTolerance(retry_user_errors=1)
    assert decide(tmp_path, _attempts(tmp_path, ["first"]), policy, USER).outcome is Outcome.requeue
    second = _attempts(tmp_path, ["first", "user-error"])
    verdict = decide(tmp_path, second, policy, USER)
    assert verdict.outcome is Outcome.failed and "retry_user_errors=1 used up" in verdict.reason
    third = _attempts(tmp_path, ["first", "preempted", "network"])
    assert decide(tmp_path, third, policy, USER).outcome is Outcome.requeue, "only user errors count here"
    assert decide(tmp_path, third, FaultTolerance(max_restarts=2, retry_user_errors=5), USER).outcome \
        is Outcome.failed, "max_restarts bounds every retry"


def test_a_manual_resume_starts_a_new_count(tmp_path: Path) -> None:
    last = _attempts(tmp_path, ["first", "timeout", "resume"])
    assert decide(tmp_path, last, FaultTolerance(max_restarts=1), NETWORK).outcome is Outcome.requeue


def test_the_rank_that_raised_names_the_attempts_end(tmp_path: Path) -> None:
    """Rank 1 raised; rank 0 saw only the reset connection: both reach the user's verdict."""
    attempt = _attempts(tmp_path, ["first"])
    for r in (0, 1):
        mark_rank(tmp_path, attempt, _rank(r), "start")
    mark_rank(tmp_path, attempt, _rank(1), "end", ending=USER)
    mark_rank(tmp_path, attempt, _rank(0), "end", ending=NETWORK)
    seen = attempt_ending(tmp_path, attempt, _rank(0), NETWORK, wait_s=0)
    assert seen == Ending(Cause.user_error, f"rank 1: {USER.detail}")
    assert attempt_ending(tmp_path, attempt, _rank(1), USER, wait_s=0) == USER
    assert decide(tmp_path, attempt, FaultTolerance(), seen).outcome is Outcome.failed


def test_a_silent_peer_is_the_cause_a_busy_one_is_not(tmp_path: Path) -> None:
    attempt = _attempts(tmp_path, ["first"])
    for r in (0, 1):
        mark_rank(tmp_path, attempt, _rank(r), "start")
    mark_rank(tmp_path, attempt, _rank(0), "end", ending=NETWORK)
    busy = attempt_ending(tmp_path, attempt, _rank(0), NETWORK, wait_s=0)
    assert busy == NETWORK, "rank 1's process runs here (blocked in a collective): not silent"
    gone = subprocess.Popen(["true"])
    gone.wait()
    start = rank_file(tmp_path, attempt, 1, "start")
    start.write_text(json.dumps({**json.loads(start.read_text()), "pid": gone.pid}))
    seen = attempt_ending(tmp_path, attempt, _rank(0), NETWORK, wait_s=0)
    assert seen.cause is Cause.rank_lost and seen.detail.startswith("rank 1 on ") and "died" in seen.detail


def test_a_peer_failure_is_seen_after_a_grace(tmp_path: Path) -> None:
    attempt = _attempts(tmp_path, ["first"])
    mark_rank(tmp_path, attempt, _rank(0), "end", ending=USER)
    assert peer_failure(tmp_path, attempt, _rank(1), grace_s=60) is None, "within the grace: its own error comes"
    assert peer_failure(tmp_path, attempt, _rank(0), grace_s=0) is None, "its own record is not a peer's"
    assert peer_failure(tmp_path, attempt, _rank(1), grace_s=0) == Ending(Cause.user_error, f"rank 0: {USER.detail}")
    mark_rank(tmp_path, attempt, _rank(0), "end", ending=Ending(Cause.preempted, "stopped at step 3"))
    assert peer_failure(tmp_path, attempt, _rank(1), grace_s=0) is None, "an agreed stop is no failure"
    end = json.loads((tmp_path / "attempts" / "0001" / "rank-0000.end.json").read_text())
    assert end["cause"] == "preempted"


def test_the_rank_that_stopped_first_is_named_whichever_watchdog_fires_first(tmp_path: Path) -> None:
    """Rank 1 hangs; rank 0 beats once more, then blocks in a collective on it. Both watchdogs fire (rank 0's
    first, as a poll may have it): the attempt names rank 1, from either rank."""
    from trainctl.worker.attempt import stall_origin
    from trainctl.worker.watchdog import Watchdog

    attempt = _attempts(tmp_path, ["first"])
    for r, idle in ((0, 15.2), (1, 16.4)):  # rank 1's last beat is 1.2 s older
        watchdog = Watchdog(15.0, tmp_path / "failures", r, attempt.number, on_stall=print)
        watchdog.report(f"rank {r} on h made no progress", idle)
        mark_rank(tmp_path, attempt, _rank(r), "end", ending=Ending(Cause.stall, f"rank {r} on h made no progress"))
    for asking in (0, 1):
        own = Ending(Cause.stall, f"rank {asking} on h made no progress")
        stuck, host, ending = stall_origin(tmp_path, attempt, _rank(asking), own, wait_s=0)
        assert (stuck, host, ending.cause) == (1, socket.gethostname(), Cause.stall)
        assert ending.detail.startswith("rank 1 ")


def test_a_lone_stall_names_its_own_rank(tmp_path: Path) -> None:
    from trainctl.worker.attempt import stall_origin

    attempt = _attempts(tmp_path, ["first"])
    own = Ending(Cause.stall, "rank 0 on h made no progress for 15 s")
    assert stall_origin(tmp_path, attempt, _rank(0), own, wait_s=0) == (0, "h", own)
