"""Progress a person can read, on global rank 0: one line every few seconds and one per epoch.

The lines go to rank 0's stdout, which the scheduler already writes to the rank's log: `submit` and
`trainctl logs -f` show them with the user's own output, in order, on every backend, and the run's uploaded
logs keep them (a separate progress file would need its own reader, upload and ordering). Cheap by design: the
step lines read the clock and the metrics the logger already received as host numbers; only the epoch line reads
trainer.callback_metrics (one host copy per epoch).

    [trainctl] epoch 2/3 · step 45/60 · 1210 samples/s · train/loss 0.41 · val/loss 0.38 · elapsed 12s · ETA 4s
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from trainctl.logview import PREFIX

EVERY_S = float(os.environ.get("TRAINCTL_PROGRESS_S", "5"))
MAX_METRICS = 6


def batch_size(batch: Any) -> int:
    """The first dimension of the batch's first tensor-like leaf (0 when there is none)."""
    if hasattr(batch, "shape"):
        return int(batch.shape[0]) if len(batch.shape) else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_size(item)
            if n:
                return n
    return 0


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def metrics_text(values: dict[str, Any]) -> str:
    shown = []
    for key in sorted(values):
        value = values[key]
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        shown.append(f"{key} {value:.4g}")
    return " · ".join(shown[:MAX_METRICS])


class ProgressImpl:
    def __init__(self, every_s: float = EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.start_step = 0
        self.samples = 0
        self.total: int | None = None
        self.latest: dict[str, Any] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        self.started = self.last = time.monotonic()
        self.start_step = trainer.global_step
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None:
            try:
                estimated = trainer.estimated_stepping_batches
                total = int(estimated) if estimated != float("inf") else None
            except Exception:  # a loader without a length: no total, no ETA
                total = None
        self.total = total

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self.samples += batch_size(batch) * trainer.world_size
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.latest.update(getattr(trainer.logger, "latest", {}))
            self._say(trainer, now)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        for key, value in trainer.callback_metrics.items():
            try:
                self.latest[key] = float(value)
            except (TypeError, ValueError):
                continue
        self.last = time.monotonic()
        self._say(trainer, self.last, end_of_epoch=True)

    def _say(self, trainer: Any, now: float, end_of_epoch: bool = False) -> None:
        step, elapsed = trainer.global_step, now - self.started
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{epochs}" + (" done" if end_of_epoch else ""),
                 f"step {step}/{self.total}" if self.total else f"step {step}"]
        if elapsed > 0:
            parts.append(f"{self.samples / elapsed:.0f} samples/s")
        shown = metrics_text(self.latest)
        if shown:
            parts.append(shown)
        parts.append(f"elapsed {duration(elapsed)}")
        done = step - self.start_step
        if self.total and done > 0:
            parts.append(f"ETA {duration(elapsed / done * max(self.total - step, 0))}")
        print(PREFIX + " · ".join(parts), file=sys.stdout, flush=True)
