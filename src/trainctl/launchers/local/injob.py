"""Local backend, in-job side: submitit's callable on every rank, and the requeue through the local controller."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from trainctl.injob import RankInfo, run_killed
from trainctl.rundir import JobFile
from trainctl.worker import entrypoint

REQUEUE_EXIT_CODE = 144  # submitit.local.local.LOCAL_REQUEUE_RETURN_CODE


class LocalInJob:
    def requeue_self(self, rank: RankInfo) -> NoReturn:
        """Every rank exits with submitit's requeue code; the local controller starts the ranks again."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(REQUEUE_EXIT_CODE)

    def cancelled(self, job: JobFile) -> str | None:
        return run_killed(job.tracking_uri, job.run_id)


def run_rank(run_dir: str) -> str:
    """submitit's callable on every rank of a local job."""
    return entrypoint.run_rank(run_dir, LocalInJob())
