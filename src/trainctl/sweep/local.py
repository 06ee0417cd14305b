"""A sweep on this machine: each trial is a local job of its own (submitit's local controller, with the local
backend's requeue), its folder the trial's logs/: `trainctl status|logs|cancel CHILD` work on it as on any run.
The trial's first rank fixes its values and run (trainctl.sweep.trial); the driver (trainctl.sweep.driver) keeps
at most `max_concurrent` of them running.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainctl import tracking
from trainctl.rundir import JobFile, atomic_write_text
from trainctl.runstate import State
from trainctl.spec import spec_from_dict
from trainctl.sweep.layout import SweepFile, trial_dir


class LocalTrials:
    def __init__(self, sweep_dir: Path, sf: SweepFile) -> None:
        self.sweep_dir, self.sf = sweep_dir, sf

    def start(self, index: int, resume: bool) -> str:
        """The trial's local job; returns its controller's pid (a child of the driver)."""
        import submitit

        from trainctl.launchers.local.submit import executor_class, executor_parameters
        from trainctl.runstate import CAUSE_FILE
        from trainctl.sweep.trial import run_trial

        td = trial_dir(self.sweep_dir, index)
        if resume and JobFile.path(td).is_file():
            job = JobFile.read(td)
            atomic_write_text(td / "attempts" / CAUSE_FILE, "resume")
            tracking.set_state(job.tracking_uri, job.run_id, State.PENDING, reason="resumed with its sweep")
        executor = executor_class(submitit)(folder=td / "logs")
        executor.update_parameters(**executor_parameters(spec_from_dict(self.sf.spec)))
        return str(executor.submit(run_trial, str(self.sweep_dir), index).job_id)

    def running(self, index: int, handle: str) -> bool:
        return not os.waitpid(int(handle), os.WNOHANG)[0]
