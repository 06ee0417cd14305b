"""How a run's state is derived (runstate.py): from its tags and MLflow's status while it runs, and from
the scheduler's final word plus the last attempt record once its job is gone (closing that attempt after a cancel:
test_cancel_parts.py)."""

from __future__ import annotations

import time

import pytest

from trainctl.runstate import Attempt, Outcome, State, ended_state, state_of


def _attempt(outcome: str | None, reason: str | None = None, number: int = 1) -> Attempt:
    return Attempt(number=number, started=time.time(), host="h", scheduler_job_id="7", cause="first",
                   ended=None if outcome is None else time.time(),
                   outcome=None if outcome is None else Outcome(outcome), reason=reason, step=20)


def test_the_state_tag_wins_over_mlflows_status() -> None:
    assert state_of({"trainctl.state": "REQUEUED"}, "RUNNING") is State.REQUEUED
    assert state_of({"trainctl.state": "KILLED"}, "FINISHED") is State.KILLED
    assert state_of({"trainctl.state": "PENDING"}, "RUNNING") is State.PENDING


@pytest.mark.parametrize(("status", "state"), [("FINISHED", State.FINISHED), ("FAILED", State.FAILED),
                                               ("KILLED", State.KILLED), ("RUNNING", State.RUNNING),
                                               ("SCHEDULED", State.RUNNING)])
def test_without_a_valid_tag_mlflows_status_decides(status: str, state: State) -> None:
    assert state_of({}, status) is state
    assert state_of({"trainctl.state": "running?"}, status) is state, "a tag that is no state is ignored"


def test_only_finished_failed_killed_are_terminal() -> None:
    assert {s for s in State if s.terminal} == {State.FINISHED, State.FAILED, State.KILLED}


def test_a_gone_job_ends_as_its_last_attempt_says() -> None:
    assert ended_state(None, _attempt("finished")) == (State.FINISHED, "finished")
    assert ended_state(None, _attempt("failed", "ValueError at my_model.py:12")) == \
           (State.FAILED, "ValueError at my_model.py:12")
    assert ended_state(None, _attempt("killed", "cancelled by the user")) == (State.KILLED, "cancelled by the user")


def test_a_gone_job_without_a_verdict_failed() -> None:
    state, reason = ended_state(None, None)
    assert state is State.FAILED and reason == "job ended without finishing: its processes died without a verdict"
    # a requeue was decided but the job never came back; an attempt the ranks never closed
    state, reason = ended_state(None, _attempt("requeue", "timeout: stopped at step 20"))
    assert state is State.FAILED and reason.endswith("timeout: stopped at step 20")
    assert ended_state(None, _attempt(None))[0] is State.FAILED


def test_the_schedulers_cancel_overrides_the_attempt_record() -> None:
    for last in (None, _attempt("finished"), _attempt("requeue"), _attempt(None)):
        assert ended_state(State.KILLED, last) == (State.KILLED, "cancelled by the scheduler")

