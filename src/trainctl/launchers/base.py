"""The submit side's one small interface, which every backend's launchers/<name>/submit.py implements (torchx-style:
submit = dry run + schedule). The in-job side is trainctl.injob.InJob."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from trainctl.rundir import JobFile
from trainctl.runstate import State
from trainctl.spec import Spec


@dataclass(frozen=True)
class Submission:
    scheduler_job_id: str
    detail: str = ""  # e.g. where to watch it


T = TypeVar("T")
Say = Callable[[str], object]  # a cancel's progress, printed as it happens (a stop may take the whole grace)


@dataclass
class CancelReport:
    """What a launcher's cancel did, step by step, and what of the job is still there (empty: nothing)."""

    say: Say = field(repr=False)
    done: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def step(self, line: str) -> None:
        self.done.append(line)
        self.say(line)


class Launcher(Protocol):
    kind: str
    poll_s: float  # how often `submit --wait` asks status(): cheap locally, gentler on a shared scheduler

    def rendezvous_port(self) -> int:
        """The job's TCPStore port, fixed at submit (job.json); 0: the ranks derive one per attempt."""
        ...

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

    def cancel(self, run_dir: Path, scheduler_job_id: str, grace_s: float, say: Say) -> CancelReport:
        """End the job for good, no requeue: the ranks' stop path first (each saves its current step), then
        harder signals after `grace_s`; return once no process of the job is left, or say which are."""
        ...


def read_rank_logs(log_dir: Path) -> dict[str, str]:
    """Each rank's output in the run directory, per attempt (trainctl.logview), in the order a person reads it."""
    from trainctl.logview import sections

    return {f"attempt {s.attempt} rank {s.rank} (std{s.stream})": "".join(f"{line}\n" for line in s.lines)
            for s in sections(log_dir)}


def poll_until(look: Callable[[], T], over: Callable[[T], bool], timeout_s: float, every_s: float) -> T:
    """Look every `every_s` until `over(seen)` or `timeout_s` has passed; return the last look."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = look()
        if over(seen) or time.monotonic() >= deadline:
            return seen
        time.sleep(every_s)
