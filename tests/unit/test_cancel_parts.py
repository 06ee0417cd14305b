"""The pieces of a cancel that need no job: which processes are a local job's, and closing its last attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainctl.control import close_last_attempt
from trainctl.launchers.procs import job_processes, pid_alive
from trainctl.runstate import Attempt, Attempts, Outcome

# A stand-in for a controller: leads its own session, starts a child that does not carry the marker.
LEADER = "import subprocess,sys,time; subprocess.Popen(['sleep','60']); time.sleep(60)"


def test_a_jobs_processes_are_its_group_and_descendants(tmp_path: Path) -> None:
    marker = str(tmp_path / "logs")
    leader = subprocess.Popen([sys.executable, "-c", LEADER, marker], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(found := job_processes(leader.pid, marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leader.pid in found and len(found) == 2, found  # the leader and its sleep, which lacks the marker
        assert stranger.pid not in found
        # a group none of whose members carries the marker is someone else's (its id reused): left alone
        assert job_processes(leader.pid, str(tmp_path / "other-run" / "logs")) == []
        assert job_processes(stranger.pid, marker) == []
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        stranger.kill()
    leader.wait(10)
    stranger.wait(10)
    assert not pid_alive(leader.pid)
    deadline = time.monotonic() + 10
    while job_processes(leader.pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # the orphaned sleep is reaped by init
    assert job_processes(leader.pid, marker) == []


def test_the_last_attempt_is_closed_killed(tmp_path: Path) -> None:
    store = Attempts(tmp_path)
    assert close_last_attempt(tmp_path, "cancelled by the user") is None  # no attempt yet
    store.save(Attempt(1, time.time(), "h", "1", "first", ended=time.time(), outcome=Outcome.requeue,
                       reason="preempted: stopped at step 7", step=7))
    store.save(Attempt(2, time.time(), "h", "1", "preempted"))  # open: its ranks died before a verdict
    closed = close_last_attempt(tmp_path, "cancelled by the user")
    assert closed is not None and closed.number == 2 and closed.outcome == "killed" and closed.ended is not None
    assert closed.reason == "cancelled by the user; its ranks ended before a verdict" and closed.step is None
    assert store.all()[0].outcome == "requeue", "only the last attempt is the cancelled one"
    # a requeue decided before the cancel never happened: that attempt ends killed, its step and reason kept
    store.save(Attempt(3, time.time(), "h", "1", "preempted", ended=1.0, outcome=Outcome.requeue, reason="x", step=9))
    closed = close_last_attempt(tmp_path, "cancelled by the scheduler")
    assert (closed.outcome, closed.ended, closed.step, closed.reason) == ("killed", 1.0, 9,
                                                                         "cancelled by the scheduler; x")
    # an attempt the ranks closed themselves keeps its verdict
    store.save(Attempt(4, time.time(), "h", "1", "resume", ended=2.0, outcome=Outcome.killed,
                       reason="the run is KILLED"))
    assert close_last_attempt(tmp_path, "cancelled by the user").reason == "the run is KILLED"
