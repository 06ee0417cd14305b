"""Agreed stop: a signal on any rank becomes a checkpoint of the same step on every rank, then a requeue;
an early stop wanted by any rank becomes every rank's stop.

The flags are reduced across ranks (MAX) on a CPU group of their own, asynchronously: the result of a reduce
launched at step k is read at step k+1, so no step waits for it. A reduce is launched about every
AGREE_EVERY_S (every step when steps are slower than that, at most every MAX_AGREE_STEPS steps): on a CPU node
whose cores the ranks fill, a reduce per millisecond-step cost ≈ 0.4 ms of context switches. The interval is
computed from the reduced (slowest) step time, so every rank launches at the same steps. On agreement every rank
saves the step it just finished and raises RequeueRequested; the worker turns that into the backend's requeue, or
ends a cancelled job there. A stop agreed on an epoch's last batch waits for that epoch's end (validation and
epoch-end hooks first), where the resume checkpoint is taken.

The stopped step's metrics must reach the loggers (every step is in the history once), and Lightning logs them
only after the step's on_train_batch_end hooks, where the stop is agreed. With worker/speedups.py on, `log_step`
(its adapter onto Lightning's logger connector) logs them and the stop leaves from that hook. Plain path (speedups
off): the stop leaves from the next hook Lightning calls — the next batch's start, validation's start or the
epoch's end — by which time Lightning has logged the step itself; the checkpoint is the same, taken before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from trainctl.callbacks.resume_checkpoint import is_last_batch
from trainctl.injob import STOP, StopRequest
from trainctl.runstate import Cause

AGREE_EVERY_S = 0.02  # target time between two reduces: a stop is agreed at most ≈ this (plus a step) late
MAX_AGREE_STEPS = 32


def agree_every(slowest_step_s: float) -> int:
    """Steps between two reduces: about AGREE_EVERY_S of training, at least 1, at most MAX_AGREE_STEPS.

    0 means no step time yet (every rank's first step): reduce again next step. Read as "fast", it would put the
    next reduce MAX_AGREE_STEPS steps away, and on slow steps a SIGTERM in the first epoch would go unheard until
    the scheduler's SIGKILL.
    """
    if slowest_step_s <= 0:
        return 1
    return min(MAX_AGREE_STEPS, max(1, int(AGREE_EVERY_S / max(slowest_step_s, 1e-6))))


def after_reduce(flags: list[float], launched_at: int) -> tuple[int, bool, int]:
    """The reduced flags [signal number, any rank's stop, slowest step time] of the reduce launched at step
    `launched_at`: (signal number or 0, stop, the step at or after which the next reduce launches). A function of
    the reduced flags alone, so every rank decides the same."""
    signum, stop, slowest_step_s = flags
    return int(signum), bool(stop), launched_at + agree_every(slowest_step_s)


def batch_end_action(signalled: bool, deferred: bool, last_batch: bool) -> str:
    """What a rank does after a batch: "stop" (checkpoint this step now), "defer" (an epoch's last batch: its
    validation and epoch-end hooks run first, the stop follows at the epoch's end) or "go" on."""
    if not signalled or deferred:
        return "go"
    return "defer" if last_batch else "stop"


class RequeueRequested(BaseException):
    """Raised on every rank after the agreed checkpoint is saved; never caught by user code's `except Exception`."""

    def __init__(self, cause: Cause, step: int, checkpoint: str) -> None:
        super().__init__(f"stop agreed at step {step} ({cause.value}); checkpoint {checkpoint}")
        self.cause, self.step, self.checkpoint = cause, step, checkpoint


class AgreedStopImpl:
    def __init__(self, resume_checkpoint: Any, request: StopRequest = STOP) -> None:
        super().__init__()
        self.resume_checkpoint = resume_checkpoint
        self.request = request
        self.deferred = False
        self.group: Any = None
        self.pending: tuple[Any, torch.Tensor, int] | None = None
        self.next_launch = 0  # global step at or after which the next reduce is launched (same on every rank)
        self.local_stop = False  # should_stop held back until the next reduce carries it
        self.last_end: float | None = None
        self.step_s = 0.0
        self.log_step: Callable[[Any], None] | None = None  # worker.speedups.log_step_metrics, when on
        self.leaving: RequeueRequested | None = None  # plain path: saved, raised at the next hook

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning registered its SIGTERM notifier (which runs a collective inside the handler): take it back.
        self.request.install()
        if trainer.world_size > 1:
            # A CPU (gloo) group of its own: the flags never touch the GPU stream, never wait on a step, and
            # never interleave with the training collectives.
            self.group = torch.distributed.new_group(backend="gloo")
            self._max = torch.distributed.AllreduceOptions()
            self._max.reduceOp = torch.distributed.ReduceOp.MAX

    def _launch(self, trainer: Any) -> None:
        """Start the reduce of this step's flags; its result is read one step later, so nothing waits."""
        local_stop = self.local_stop or bool(trainer.should_stop)
        trainer.should_stop = False  # held back until every rank has heard of it (see _collect)
        self.local_stop = False
        # MAX keeps a signal number, any rank's stop, and the slowest rank's step time.
        flags = torch.tensor([float(self.request.signum or 0), float(local_stop), self.step_s], dtype=torch.float64)
        # The group's own allreduce: torch.distributed.all_reduce's argument checks and logging wrapper cost
        # ≈ 40 µs on a CPU, as much as the reduce itself.
        work = self.group.allreduce([flags], self._max)
        self.pending = (work, flags, trainer.global_step)

    def _collect(self, trainer: Any) -> tuple[bool, bool]:
        """Finish the reduce launched last step; apply an agreed should_stop. Returns (signalled, stop)."""
        if self.pending is None:
            return False, False
        work, flags, launched_at = self.pending
        self.pending = None
        work.wait()
        signum, stop, self.next_launch = after_reduce(flags.tolist(), launched_at)
        if stop:
            trainer.should_stop = True
        if signum and not self.request.requested:
            self.request.heard_from_peer(signum)
        return bool(signum), stop

    def _agreed_now(self, trainer: Any) -> bool:
        self._launch(trainer)
        return self._collect(trainer)[0]

    def _save(self, trainer: Any) -> RequeueRequested:
        rc = self.resume_checkpoint
        if rc.last_saved_step == trainer.global_step:  # the epoch-end save of this very step just happened
            path = rc.dir / f"step-{trainer.global_step:09d}.ckpt"
        else:
            path = rc.save(trainer)
        return RequeueRequested(self.request.cause, trainer.global_step, str(path))

    def _leave_if_saved(self) -> None:
        """Plain path: the hook after the stopped step's own logging."""
        if self.leaving is not None:
            raise self.leaving

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._leave_if_saved()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._leave_if_saved()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size == 1:
            signalled = self.request.requested
        else:
            now = time.monotonic()
            self.step_s = now - self.last_end if self.last_end is not None else 0.0
            self.last_end = now
            if trainer.should_stop:  # one rank's wish: carried by the next reduce, applied once agreed
                self.local_stop, trainer.should_stop = True, False
            signalled, stop = self._collect(trainer)
            if not signalled and not stop and not self.deferred and trainer.global_step >= self.next_launch:
                self._launch(trainer)
        action = batch_end_action(signalled, self.deferred, signalled and is_last_batch(trainer, batch_idx))
        if action != "stop":
            self.deferred = self.deferred or action == "defer"
            return
        if self.log_step is None:
            self.leaving = self._save(trainer)  # raised once Lightning has logged this step
            return
        self.log_step(trainer)  # this step, the last before the checkpoint, joins the history before we leave
        raise self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._leave_if_saved()
        if trainer.world_size == 1:
            signalled = self.request.requested
        else:
            signalled = self._collect(trainer)[0]
            signalled = self._agreed_now(trainer) or signalled
        if self.deferred or signalled:
            raise self._save(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._leave_if_saved()
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None
