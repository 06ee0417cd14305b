"""The sweep's driver where each trial is a job of its own (this machine, Ray): a detached process that keeps at
most `max_concurrent` trials running, settles the ended ones and stops starting trials once the sweep has ended
(cancelled, or its first trials all failed). One loop for every such backend; a backend only says how to start one
trial and whether it still runs (`Trials`).

    python -m trainctl.sweep.driver SWEEP_DIR [--resume]        (log: SWEEP_DIR/logs/driver.log)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from trainctl import tracking
from trainctl.runstate import State
from trainctl.sweep import runs
from trainctl.sweep.layout import SweepFile
from trainctl.sweep.space import parse_sweep

POLL_S = 0.5


class Trials(Protocol):
    """How one backend starts a trial and sees it end."""

    def start(self, index: int, resume: bool) -> str:
        """Start trial `index` (a resumed one goes on in its own run); returns a handle for `running`, or "" when
        the trial did not start (what it left in its directory says why)."""
        ...

    def running(self, index: int, handle: str) -> bool:
        ...


def trials_for(sweep_dir: Path, sf: SweepFile) -> Trials:
    if sf.backend == "ray":
        from trainctl.sweep.ray import RayTrials

        return RayTrials(sweep_dir, sf)
    from trainctl.sweep.local import LocalTrials

    return LocalTrials(sweep_dir, sf)


def start_driver(sweep_dir: Path, resume: bool = False) -> int:
    """The driver, in a session of its own (a cancel of the CLI's terminal does not reach it); returns its pid."""
    log = sweep_dir / "logs" / "driver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainctl.sweep.driver", str(sweep_dir),
                                 *(["--resume"] if resume else [])], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def unfinished(sweep_dir: Path, trials: int) -> list[int]:
    done = [runs.ended(sweep_dir, i) for i in range(trials)]
    return [i for i, e in enumerate(done) if e is None or e.outcome == "killed"]


class _Stop:
    """SIGTERM (`cancel SWEEP`) ends the loop between two steps, never halfway through starting a trial."""

    asked = False

    def handler(self, signum: int, frame: Any) -> None:
        self.asked = True


def drive(sweep_dir: Path, resume: bool) -> None:
    sf = SweepFile.read(sweep_dir)
    cfg = parse_sweep(sf.sweep)
    trials = trials_for(sweep_dir, sf)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.handler)
    todo = unfinished(sweep_dir, cfg.trials) if resume else list(range(cfg.trials))
    running: dict[int, str] = {}
    while not stop.asked:
        running = {i: h for i, h in running.items() if trials.running(i, h)}
        runs.settle(sweep_dir)
        if tracking.current_state(sf.tracking_uri, sf.parent_run_id).terminal:
            print(f"the sweep has ended: no more trials start ({len(running)} still running)", flush=True)
            return
        while todo and len(running) < cfg.max_concurrent and not stop.asked:
            index = todo.pop(0)
            try:
                handle = trials.start(index, resume)
            except Exception as exc:  # the backend refused it: the next trials would be refused too
                why = f"trial {index} could not be started on {sf.backend}: {exc}"
                print(why, flush=True)
                tracking.set_state(sf.tracking_uri, sf.parent_run_id, State.FAILED, reason=why[:1500],
                                   unless=tracking.ended)
                return
            if handle:
                running[index] = handle
                print(f"trial {index}: started ({handle})", flush=True)
        if not todo and not running:
            runs.settle(sweep_dir, final=True)
            print("every trial has ended", flush=True)
            return
        time.sleep(POLL_S)
    print(f"stopped (SIGTERM) with {len(running)} trials running", flush=True)


if __name__ == "__main__":
    drive(Path(sys.argv[1]), "--resume" in sys.argv[2:])
