"""The one small interface every backend implements (torchx-style: submit = dry run + schedule)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trainctl.rundir import JobFile
from trainctl.spec import Spec
from trainctl.tracking import State


@dataclass(frozen=True)
class Submission:
    scheduler_job_id: str
    detail: str = ""  # e.g. where to watch it


class Launcher(Protocol):
    kind: str
    poll_s: float  # how often `submit --wait` asks status(): cheap locally, gentler on a shared scheduler

    def dry_run(self, spec: Spec, run_dir: Path) -> str:
        """The exact request that submit would send (an sbatch script, a Ray job request, executor settings)."""
        ...

    def submit(self, spec: Spec, run_dir: Path, job: JobFile) -> Submission:
        """Send the job; return the scheduler's id. The MLflow run already exists."""
        ...

    def status(self, run_dir: Path, scheduler_job_id: str) -> State | None:
        """The scheduler's view in trainctl's vocabulary; None when it no longer knows the job."""
        ...

    def logs(self, run_dir: Path, scheduler_job_id: str) -> dict[str, str]:
        """Each rank's output, keyed by a label such as 'rank 0 (attempt 1)'."""
        ...

    def cancel(self, run_dir: Path, scheduler_job_id: str) -> None:
        """End the job for good: no requeue."""
        ...


def read_rank_logs(log_dir: Path) -> dict[str, str]:
    """Each rank's output in the run directory, per attempt (trainctl.logview), in the order a person reads it."""
    from trainctl.logview import sections

    return {f"attempt {s.attempt} rank {s.rank} (std{s.stream})": "".join(f"{line}\n" for line in s.lines)
            for s in sections(log_dir)}
