"""Ray backend, in-job side: a requeue is an exception that Ray Train counts against FailureConfig(max_failures)."""

from __future__ import annotations

import os
import sys
import threading
from typing import NoReturn

from trainctl.injob import RankInfo, run_killed
from trainctl.rundir import JobFile


class RestartRequested(RuntimeError):
    """Raised by a rank whose verdict is "requeue": Ray Train's FailureConfig restarts the worker group."""


class RayInJob:
    """Made on the thread that runs Ray Train's train function (worker.py train_loop), which it remembers."""

    def __init__(self) -> None:
        self.train_thread = threading.get_ident()

    def requeue_self(self, rank: RankInfo) -> NoReturn:
        """Raise: Ray Train counts the worker error against FailureConfig(max_failures) and restarts the group.

        Off the train function's thread (the watchdog's stall path) an exception would end only that thread: the
        process leaves instead, and Ray restarts the group for its dead worker just the same.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        if threading.get_ident() != self.train_thread:
            sys.stderr.write(f"trainctl: rank {rank.global_rank} leaves for Ray Train to restart the worker group\n")
            sys.stderr.flush()
            os._exit(1)
        raise RestartRequested(f"rank {rank.global_rank}: trainctl's verdict is requeue; Ray Train restarts the "
                               f"worker group, which resumes from the newest good checkpoint")

    def cancelled(self, job: JobFile) -> str | None:
        return run_killed(job.tracking_uri, job.run_id)
