"""No hangs: a rank that makes no progress for `collective_timeout_s` dumps every thread's stack to the run
and leaves, so its peers' collectives fail fast and the job is requeued or fails by its policy.

Gloo and NCCL time out a collective that waits on a dead peer; a rank stuck outside a collective (a deadlock in
user code, a hung data-loader worker) is caught here, and so is a peer that recorded a failure while this rank
still waits on it (a rendezvous or collective that would only time out): this rank then ends at once.
Heartbeats are a float assignment per batch. A Python thread cannot act while the main thread holds the
interpreter lock (seen here: a rank stuck forking a loader worker), so faulthandler's C-level timer is armed
as a backstop at twice the timeout: it writes every thread's stack and ends the process without needing the
interpreter.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Watchdog:
    def __init__(self, timeout_s: float, report_dir: Path, rank: int, attempt: int,
                 on_stall: Callable[[str], None], peer_failed: Callable[[], Any] | None = None,
                 on_peer_failure: Callable[[Any], None] | None = None) -> None:
        self.timeout_s, self.report_dir, self.rank, self.attempt = timeout_s, report_dir, rank, attempt
        self.on_stall = on_stall
        self.peer_failed, self.on_peer_failure = peer_failed, on_peer_failure
        self.last_beat = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="trainctl-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self.thread.start()
        self.report_dir.mkdir(parents=True, exist_ok=True)
        stem = self.report_dir / f"attempt-{self.attempt:04d}-rank-{self.rank:04d}"
        self.backstop_file = open(f"{stem}.backstop-stacks.txt", "w")  # noqa: SIM115 - held while armed
        self.armed_at = 0.0
        self._arm()
        return self

    def _arm(self) -> None:
        self.armed_at = time.monotonic()
        faulthandler.dump_traceback_later(2 * self.timeout_s, exit=True, file=self.backstop_file)

    def beat(self) -> None:
        self.last_beat = now = time.monotonic()
        if now - self.armed_at > self.timeout_s / 4:
            self._arm()

    def stop(self) -> None:
        self.stopped.set()
        faulthandler.cancel_dump_traceback_later()
        with contextlib.suppress(Exception):
            self.backstop_file.close()
            if not Path(self.backstop_file.name).stat().st_size:
                Path(self.backstop_file.name).unlink()

    def _watch(self) -> None:
        while not self.stopped.wait(min(5.0, self.timeout_s / 4)):
            peer = self._peer_failure()
            if peer is not None and self.on_peer_failure is not None:
                self.on_peer_failure(peer)
                return
            idle = time.monotonic() - self.last_beat
            if idle > self.timeout_s:
                reason = f"rank {self.rank} on {socket.gethostname()} made no progress for {idle:.0f} s"
                self.report(reason, idle)
                self.on_stall(reason)
                return

    def _peer_failure(self) -> Any:
        if self.peer_failed is None:
            return None
        try:
            return self.peer_failed()
        except Exception:  # a half-written record on shared storage: look again next round
            return None

    def report(self, reason: str, idle_s: float | None = None) -> Path:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        stem = self.report_dir / f"attempt-{self.attempt:04d}-rank-{self.rank:04d}"
        with open(f"{stem}.stacks.txt", "w") as fh:
            fh.write(f"{reason}\n\n")
            fh.flush()
            faulthandler.dump_traceback(file=fh, all_threads=True)
        Path(f"{stem}.json").write_text(json.dumps({
            "rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "reason": reason,
            "time": time.time(), "idle_s": idle_s,
        }))
        return Path(f"{stem}.stacks.txt")


class HeartbeatImpl:
    """Callback: one heartbeat per train/validation/test batch."""

    def __init__(self, watchdog: Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def on_train_batch_end(self, *args: Any) -> None:
        self.watchdog.beat()

    def on_validation_batch_end(self, *args: Any) -> None:
        self.watchdog.beat()

    def on_test_batch_end(self, *args: Any) -> None:
        self.watchdog.beat()

    def on_train_epoch_end(self, *args: Any) -> None:
        self.watchdog.beat()
