"""Run state's pure parts: restart counting, the outcome → state mapping, the typed attempt log, rank 0's wait."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from trainctl.runstate import Attempt, Attempts, Cause, Outcome, State, await_attempt, restarts_used, state_after


def _log(causes: list[str]) -> list[Attempt]:
    return [Attempt(i + 1, float(i), "h", "1", cause) for i, cause in enumerate(causes)]


def test_restarts_count_from_the_last_fresh_start() -> None:
    assert restarts_used(_log(["first"])) == 0
    assert restarts_used(_log(["first", "network", "timeout"])) == 2
    assert restarts_used(_log(["first", "network", "resume", "preempted"])) == 1, "a manual resume starts anew"
    assert restarts_used(_log(["unknown", "network"])) == 2, "no fresh start recorded: every attempt counts"
    user = _log(["first", "user-error", "network", "user-error"])
    assert restarts_used(user, cause=Cause.user_error) == 2
    assert restarts_used(user[:3], cause=Cause.user_error) == 1


def test_every_outcome_maps_to_one_state() -> None:
    assert {o: state_after(o) for o in Outcome} == {
        Outcome.finished: State.FINISHED, Outcome.requeue: State.REQUEUED, Outcome.failed: State.FAILED,
        Outcome.killed: State.KILLED}
    assert [o for o in Outcome if state_after(o).terminal] == [Outcome.finished, Outcome.failed, Outcome.killed]


def test_attempt_log_is_typed_and_reads_what_it_wrote(tmp_path: Path) -> None:
    log = Attempts(tmp_path)
    log.save(Attempt(1, 1.0, "h", "1", "first", ended=2.0, outcome=Outcome.requeue, reason="timeout: x", step=5))
    (tmp_path / "attempts" / "0002.json").write_text(json.dumps(  # as an older trainctl wrote it, one field more
        {"number": 2, "started": 3.0, "host": "h", "scheduler_job_id": "1", "cause": "timeout", "ended": 4.0,
         "outcome": "failed", "reason": "user-error: y", "step": 7, "retired_field": 1}))
    log.save(Attempt(3, 5.0, "h", "1", "resume"))
    first, second, third = log.all()
    assert first.outcome is Outcome.requeue and second.outcome is Outcome.failed and third.outcome is None
    assert json.loads((tmp_path / "attempts" / "0001.json").read_text())["outcome"] == "requeue"
    assert f"{first.outcome}" == "requeue", "shown as written"
    assert not first.closed_otherwise and second.closed_otherwise and not third.closed_otherwise
    assert log.last() == third and Attempts(tmp_path / "none").last() is None


def test_await_attempt_sees_rank_zero_record_and_gives_up_in_time(tmp_path: Path) -> None:
    log = Attempts(tmp_path)

    def second(attempts: list[Attempt]) -> Attempt | None:
        return next((a for a in attempts if a.number == 2), None)

    t0 = time.monotonic()
    assert await_attempt(tmp_path, second, wait_s=0.3, every_s=0.05) is None
    assert 0.3 <= time.monotonic() - t0 < 2.0, "the wait is bounded"
    writer = threading.Timer(0.2, lambda: log.save(Attempt(2, 1.0, "h", "1", "network")))
    writer.start()
    t0 = time.monotonic()
    found = await_attempt(tmp_path, second, wait_s=10.0, every_s=0.05)
    writer.join()
    assert found is not None and found.cause == "network" and time.monotonic() - t0 < 5.0
    assert await_attempt(None, lambda attempts: attempts or None, wait_s=0.0) is None, "no run dir: an empty log"
