"""Agreed stop: a signal on any rank becomes a checkpoint of the same step on every rank, then a requeue.

The flag is reduced across ranks once per step (MAX), replacing Lightning's own per-step SIGTERM broadcast,
so trainctl adds no collective. On agreement every rank saves the step it just finished and raises
RequeueRequested; the worker turns that into the backend's requeue. A stop agreed on an epoch's last batch
waits for that epoch's end (validation and epoch-end hooks first), where the resume checkpoint is taken.
"""

from __future__ import annotations

import signal
from typing import Any

import torch

from trainctl.callbacks.resume_checkpoint import is_last_batch
from trainctl.worker.signals import STOP, StopRequest


class RequeueRequested(BaseException):  # noqa: N818 - an outcome, not an error
    """Raised on every rank after the agreed checkpoint is saved; never caught by user code's `except Exception`."""

    def __init__(self, cause: str, step: int, checkpoint: str) -> None:
        super().__init__(f"stop agreed at step {step} ({cause}); checkpoint {checkpoint}")
        self.cause, self.step, self.checkpoint = cause, step, checkpoint


class AgreedStopImpl:
    def __init__(self, resume_checkpoint: Any, request: StopRequest = STOP) -> None:
        super().__init__()
        self.resume_checkpoint = resume_checkpoint
        self.request = request
        self.deferred = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning registered its SIGTERM notifier (which runs a collective inside the handler): take it back.
        self.request.install()
        epoch_loop = trainer.fit_loop.epoch_loop
        if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
            epoch_loop._broadcast_sigterm_tensor = lambda: None  # our per-step reduce replaces it

    def _agreed(self, trainer: Any) -> bool:
        if trainer.world_size == 1:
            return self.request.requested
        flag = torch.tensor([1.0 if self.request.requested else 0.0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _stop(self, trainer: Any) -> None:
        rc = self.resume_checkpoint
        if rc.last_saved_step == trainer.global_step:  # the epoch-end save of this very step just happened
            path = rc.dir / f"step-{trainer.global_step:09d}.ckpt"
        else:
            path = rc.save(trainer)
        cause = self.request.cause if self.request.requested else "peer-signalled"
        raise RequeueRequested(cause, trainer.global_step, str(path))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.deferred or not self._agreed(trainer):
            return
        if is_last_batch(trainer, batch_idx):
            self.deferred = True  # finish this epoch's validation and epoch-end hooks first
            return
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.deferred or self._agreed(trainer):
            self._stop(trainer)


def restore_default_handlers() -> None:
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
