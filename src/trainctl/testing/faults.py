"""Callbacks that inject real faults at a chosen step, once per run (a marker file in the run dir)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class _Once:
    def __init__(self, step: int, rank: int, name: str) -> None:
        self.step, self.rank, self.name = step, rank, name

    def due(self, trainer: Any) -> bool:
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return False
        marker = Path(trainer.default_root_dir) / "faults" / f"{self.name}-{self.step}-{self.rank}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return True


class SignalAtStep(pl.Callback):
    """Send `signal` (USR2 = time limit warning, TERM = preemption, KILL = crash) to this rank at `step`."""

    def __init__(self, step: int, rank: int = 0, signal_name: str = "SIGUSR2") -> None:
        self.once = _Once(step, rank, f"signal-{signal_name}")
        self.signum = signal.Signals[signal_name]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.once.due(trainer):
            os.kill(os.getpid(), self.signum)


class RaiseAtStep(pl.Callback):
    """Raise on `rank` at `step` (once per run, or every attempt with `always`). error "user": a RuntimeError from
    this file (the user's code: the run fails at once by default); "network": the DistNetworkError a reset
    connection raises (the infrastructure's: the attempt is retried)."""

    def __init__(self, step: int, rank: int = 0, always: bool = False, error: str = "user") -> None:
        self.once = _Once(step, rank, "raise")
        self.always = always
        self.error = error

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        hit = (trainer.global_step == self.once.step and trainer.global_rank == self.once.rank) if self.always \
            else self.once.due(trainer)
        if not hit:
            return
        where = f"at step {trainer.global_step} on rank {trainer.global_rank}"
        if self.error == "network":
            import torch.distributed

            raise torch.distributed.DistNetworkError(f"Connection reset by peer (injected {where})")
        raise RuntimeError(f"injected failure {where}")


class RaiseAtTrainEnd(pl.Callback):
    """Raise RuntimeError from on_train_end on `rank`: the user's end-of-training work failed."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank == self.rank:
            raise RuntimeError(f"injected failure in on_train_end on rank {trainer.global_rank}")


class RaiseOnInit(pl.Callback):
    """Raise RuntimeError while the job's objects are built on `rank` (before the rendezvous): its peers would
    wait for it in the rendezvous. Outside a rank (validation at submit) it does nothing."""

    def __init__(self, rank: int = 0) -> None:
        if os.environ.get("RANK") == str(rank):
            raise RuntimeError(f"injected failure while building rank {rank}")


class HangAtStep(pl.Callback):
    """Stop making progress on `rank` at `step` (a stuck rank), once per run."""

    def __init__(self, step: int, rank: int = 1, seconds: float = 3600.0) -> None:
        self.once = _Once(step, rank, "hang")
        self.seconds = seconds

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.once.due(trainer):
            time.sleep(self.seconds)


class SlowSteps(pl.Callback):
    """Sleep `seconds` after every step: stretches a short job so that a time limit or a signal lands mid-run.
    With `until_step`, only while trainer.global_step < until_step: the window a test needs is slow, the rest of
    the job runs at full speed."""

    def __init__(self, seconds: float = 0.1, until_step: int | None = None) -> None:
        self.seconds = seconds
        self.until_step = until_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.until_step is None or trainer.global_step < self.until_step:
            time.sleep(self.seconds)


class StopOnRank(pl.Callback):
    """Set trainer.should_stop on one rank only at `step` (a user callback deciding alone)."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step and trainer.global_rank == self.rank:
            trainer.should_stop = True


class PrintEveryStep(pl.Callback):
    """The user's own output on `rank`: one long line per step with multibyte characters (💡, █), unflushed, so
    that the buffered writes cut lines and characters anywhere; and one warning of the user's own."""

    def __init__(self, rank: int = 0, width: int = 150) -> None:
        self.rank, self.width = rank, width

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != self.rank:
            return
        if trainer.global_step == 1:
            import warnings

            warnings.warn("user warning: kept ✓", UserWarning, stacklevel=1)
        print(f"mark pid={os.getpid()} step={trainer.global_step} 💡 {'█' * self.width} end")
