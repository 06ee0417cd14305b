"""A sweep on Ray: each trial is a Ray job of its own, submitted as a single trainctl job on Ray is
(launchers/ray: the Jobs API, Ray Train's TorchTrainer running trainctl's worker), its run directory the trial's.

The driver (trainctl.sweep.driver, on the submitting machine) fixes a trial's values and child run just before it
submits the trial's job, so an adaptive sampler sees every trial that ended before; the driver keeps at most
`max_concurrent` of these jobs alive. A trial's requeue is Ray Train's restart of its worker group inside the same
job (FailureConfig), from the trial's own checkpoints; a resumed trial is a new Ray job on the same run directory,
so it keeps its values and its run. `trainctl status|logs|cancel CHILD` work on a trial as on any Ray run.
"""

from __future__ import annotations

from pathlib import Path

from trainctl import control, tracking
from trainctl.rundir import JobFile, atomic_write_text, use_import_dirs
from trainctl.runstate import CAUSE_FILE, State
from trainctl.spec import spec_from_dict
from trainctl.sweep.layout import SweepFile, trial_dir
from trainctl.sweep.trial import fix


class RayTrials:
    def __init__(self, sweep_dir: Path, sf: SweepFile) -> None:
        from trainctl.launchers.ray.submit import LAUNCHER

        self.sweep_dir, self.sf, self.launcher = sweep_dir, sf, LAUNCHER
        use_import_dirs(sf.import_dirs)

    def start(self, index: int, resume: bool) -> str:
        """Fix the trial (first start), then submit its Ray job; returns the job's submission id, or "" when the
        trial does not start (its sweep has ended, or its preparation failed: a failed trial the sweep counts)."""
        td = trial_dir(self.sweep_dir, index)
        if resume and JobFile.path(td).is_file():
            atomic_write_text(td / "attempts" / CAUSE_FILE, "resume")
            tracking.set_state(self.sf.tracking_uri, JobFile.read(td).run_id, State.PENDING,
                               reason="resumed with its sweep")
        why = fix(self.sweep_dir, self.sf, index)
        if why:
            print(f"trial {index}: not started: {why}", flush=True)
            return ""
        job = JobFile.read(td)
        return control.launch(spec_from_dict(job.spec), td, job).scheduler_job_id

    def running(self, index: int, handle: str) -> bool:
        """Until the Jobs API calls the job over (or has forgotten it)."""
        seen = self.launcher.status(trial_dir(self.sweep_dir, index), handle)
        return seen is not None and not seen.terminal
