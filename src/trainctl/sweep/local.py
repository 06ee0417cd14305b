"""A sweep on this machine: a detached driver keeps at most `max_concurrent` trials running.

Each trial is a local job of its own (submitit's local controller, with the local backend's requeue), its folder
the trial's logs/: `trainctl status|logs|cancel CHILD` work on it as on any run. The driver only starts trials and
settles the ended ones; it stops starting them once the sweep has ended (cancelled, or its first trials all failed).

    python -m trainctl.sweep.local SWEEP_DIR [--resume]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from trainctl import tracking
from trainctl.rundir import JobFile, atomic_write_text
from trainctl.runstate import State
from trainctl.spec import spec_from_dict
from trainctl.sweep import runs
from trainctl.sweep.layout import SweepFile, trial_dir
from trainctl.sweep.space import parse_sweep

POLL_S = 0.5


def start_driver(sweep_dir: Path, resume: bool = False) -> int:
    """The driver, in a session of its own (a cancel of the CLI's terminal does not reach it); returns its pid."""
    log = sweep_dir / "logs" / "driver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainctl.sweep.local", str(sweep_dir),
                                 *(["--resume"] if resume else [])], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def launch(sweep_dir: Path, sf: SweepFile, index: int, resume: bool) -> int:
    """Start one trial's local job; returns its controller's pid. A trial resumed goes on in its own run."""
    import submitit

    from trainctl.launchers.local.submit import executor_class, executor_parameters
    from trainctl.runstate import CAUSE_FILE
    from trainctl.sweep.trial import run_trial

    td = trial_dir(sweep_dir, index)
    if resume and JobFile.path(td).is_file():
        job = JobFile.read(td)
        atomic_write_text(td / "attempts" / CAUSE_FILE, "resume")
        tracking.set_state(job.tracking_uri, job.run_id, State.PENDING, reason="resumed with its sweep")
    executor = executor_class(submitit)(folder=td / "logs")
    executor.update_parameters(**executor_parameters(spec_from_dict(sf.spec)))
    return int(executor.submit(run_trial, str(sweep_dir), index).job_id)


def unfinished(sweep_dir: Path, trials: int) -> list[int]:
    done = [runs.ended(sweep_dir, i) for i in range(trials)]
    return [i for i, e in enumerate(done) if e is None or e.outcome == "killed"]


def drive(sweep_dir: Path, resume: bool) -> None:
    sf = SweepFile.read(sweep_dir)
    cfg = parse_sweep(sf.sweep)
    todo = unfinished(sweep_dir, cfg.trials) if resume else list(range(cfg.trials))
    running: dict[int, int] = {}
    while True:
        for index, pid in list(running.items()):
            if os.waitpid(pid, os.WNOHANG)[0]:
                del running[index]
        runs.settle(sweep_dir)
        if tracking.current_state(sf.tracking_uri, sf.parent_run_id).terminal:
            print(f"the sweep has ended: no more trials start ({len(running)} still running)", flush=True)
            return
        while todo and len(running) < cfg.max_concurrent:
            index = todo.pop(0)
            running[index] = launch(sweep_dir, sf, index, resume)
            print(f"trial {index}: started (controller pid {running[index]})", flush=True)
        if not todo and not running:
            runs.settle(sweep_dir, final=True)
            print("every trial has ended", flush=True)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    drive(Path(sys.argv[1]), "--resume" in sys.argv[2:])
