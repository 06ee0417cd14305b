"""The one owner of the preemption signals on every rank.

SIGUSR2 (the scheduler's warning before a time limit) and SIGTERM (preemption, requeue, or a cancel) only set a
flag here; the ranks agree at the next step boundary (callbacks/preemption.py), save that step together and
leave with a "requeue me" outcome, or, when the job was cancelled (the run is KILLED, or SLURM cancelled it),
end it `killed`: the worker asks its backend (`cancelled(job)`) before its verdict. Installing these handlers
inside the job's callable replaces submitit's own USR2/TERM handlers; callbacks/preemption.py re-installs them
after Lightning registers its SIGTERM handler.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

WARNING_SIGNAL = signal.SIGUSR2


@dataclass
class StopRequest:
    signum: int | None = None
    received_at: float | None = None
    events: list[str] = field(default_factory=list)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def cause(self) -> str:
        if self.signum == WARNING_SIGNAL:
            return "timeout"
        if self.signum == signal.SIGTERM:
            return "preempted"
        return "interrupted"

    def handler(self, signum: int, frame: FrameType | None) -> None:
        # Async-signal context: set plain attributes only, no I/O, no collectives.
        if self.signum is None:
            self.signum = signum
            self.received_at = time.time()
        self.events.append(signal.Signals(signum).name)

    def heard_from_peer(self, signum: int) -> None:
        """Another rank received the signal: this rank stops for the same cause."""
        self.signum = signum
        self.received_at = time.time()
        self.events.append(f"peer:{signal.Signals(signum).name}")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Ray runs the train function in a thread; its setup hook installs in the main thread
        for sig in (WARNING_SIGNAL, signal.SIGTERM):
            signal.signal(sig, self.handler)


STOP = StopRequest()
