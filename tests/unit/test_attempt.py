"""The requeue-or-end decision: a pure function of outcome, restarts used and policy."""

from __future__ import annotations

import time
from pathlib import Path

from trainctl.rundir import Attempt, Attempts
from trainctl.spec import FaultTolerance, OnFailure
from trainctl.worker.attempt import Outcome, decide


def _attempts(run_dir: Path, causes: list[str]) -> Attempt:
    store = Attempts(run_dir)
    for i, cause in enumerate(causes, 1):
        store.save(Attempt(i, time.time(), "h", "1", cause))
    return store.all()[-1]


def test_signals_requeue_until_max_restarts(tmp_path: Path) -> None:
    policy = FaultTolerance(max_restarts=2)
    assert decide(tmp_path, _attempts(tmp_path, ["first"]), policy, "stop:timeout", "").outcome is Outcome.requeue
    last = _attempts(tmp_path, ["first", "timeout", "preempted"])
    verdict = decide(tmp_path, last, policy, "stop:timeout", "x")
    assert verdict.outcome is Outcome.failed and "max_restarts=2" in verdict.reason


def test_crash_follows_on_failure(tmp_path: Path) -> None:
    first = _attempts(tmp_path, ["first"])
    assert decide(tmp_path, first, FaultTolerance(on_failure=OnFailure.fail), "crash", "E").outcome is Outcome.failed
    assert decide(tmp_path, first, FaultTolerance(), "crash", "E").outcome is Outcome.requeue
    assert decide(tmp_path, first, FaultTolerance(), "finished", "").outcome is Outcome.finished
    assert decide(tmp_path, first, FaultTolerance(), "killed", "").outcome is Outcome.killed


def test_a_manual_resume_starts_a_new_count(tmp_path: Path) -> None:
    last = _attempts(tmp_path, ["first", "timeout", "resume"])
    assert decide(tmp_path, last, FaultTolerance(max_restarts=1), "crash", "").outcome is Outcome.requeue
