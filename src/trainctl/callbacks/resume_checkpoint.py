"""Resume checkpoints: the points a requeued or resumed attempt continues from.

Written at every_n_train_steps, every_n_minutes, each epoch end and when the ranks agree to stop. All ranks
call `trainer.save_checkpoint` together (it ends in a barrier); only global rank 0 writes, through the atomic
CheckpointIO. A save that would land on an epoch's last batch is moved to that epoch's end, because Lightning
resumes such a checkpoint without the epoch's validation and epoch-end hooks. The newest `keep` checkpoints
are kept; older ones are removed only after a newer one is on disk.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from trainctl.callbacks.checkpoint_io import verify

log = logging.getLogger("trainctl.checkpoint")
STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")


def resume_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "resume"


def candidates(run_dir: Path) -> list[Path]:
    """Resume checkpoints, newest step first."""
    found = [(int(m.group(1)), p) for p in resume_dir(run_dir).glob("step-*.ckpt") if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_good(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest resume checkpoint that verifies, and the (path, problem) of each newer one skipped."""
    skipped: list[tuple[Path, str]] = []
    for path in candidates(run_dir):
        problem = verify(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def beyond_keep(newest_first: list[Path], keep: int, written: Path) -> list[Path]:
    """The resume checkpoints to remove once `written` is on disk: all but the `keep` newest, never `written`."""
    return [p for p in newest_first[max(keep, 1) :] if p != written]


def is_last_batch(trainer: Any, batch_idx: int) -> bool:
    total = trainer.num_training_batches
    return isinstance(total, int) and batch_idx + 1 >= total


class ResumeCheckpointImpl:
    def __init__(self, run_dir: Path, every_n_train_steps: int | None, every_n_minutes: float | None,
                 keep: int = 2) -> None:
        super().__init__()
        self.dir = resume_dir(run_dir)
        self.every_n_train_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self.keep = keep
        self.last_time = time.monotonic()
        self.saved_steps: list[int] = []
        self.last_saved_step: int | None = None
        self.pending_stop = False
        self.group: Any = None

    # Lightning orders subclasses of Checkpoint last, after EarlyStopping has made its decision.
    @property
    def state_key(self) -> str:
        return "TrainctlResumeCheckpoint"

    def save(self, trainer: Any) -> Path:
        step = trainer.global_step
        path = self.dir / f"step-{step:09d}.ckpt"
        trainer.save_checkpoint(path)  # every rank: dump + barrier; rank 0 writes
        self.last_saved_step = step
        self.last_time = time.monotonic()
        if trainer.is_global_zero:
            io = trainer.strategy.checkpoint_io
            # Once this checkpoint is on disk (an async write lands later): until then the older ones are the
            # newest that verify.
            io.after_write(path, lambda: self._prune(io, path))
        return path

    def _prune(self, io: Any, written: Path) -> None:
        for old in beyond_keep(candidates(self.dir.parent.parent), self.keep, written):
            io.remove_checkpoint(old)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if getattr(self, "pending_stop", False):
            trainer.should_stop = True
        if self.every_n_minutes is not None and trainer.world_size > 1:
            # A CPU group for rank 0's clock: deciding never waits on the GPU stream.
            self.group = torch.distributed.new_group(backend="gloo")

    def _time_due(self, trainer: Any) -> bool:
        if self.every_n_minutes is None:
            return False
        due = torch.tensor([int(time.monotonic() - self.last_time >= 60 * self.every_n_minutes)])
        if trainer.world_size > 1:
            torch.distributed.broadcast(due, src=0, group=self.group)  # rank 0's clock decides for all
        return bool(due.item())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if is_last_batch(trainer, batch_idx):
            return  # the epoch-end save covers it
        step = trainer.global_step
        if (self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self.last_saved_step) \
                or self._time_due(trainer):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step != self.last_saved_step:
            self.save(trainer)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["trainctl_should_stop"] = bool(trainer.should_stop)  # a pending early stop survives

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.pending_stop = bool(checkpoint.get("trainctl_should_stop", False))

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_saved_step = state.get("last_saved_step")
