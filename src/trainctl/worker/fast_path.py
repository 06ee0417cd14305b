"""Step metrics without a host sync on GPUs, without asking the user to change the module.

Lightning's logger connector turns every logged tensor into a Python float (`.item()`) before any logger sees it,
at every `log_every_n_steps`: the host then waits for the GPU to finish the step and the next step's kernels are
launched late. Here a device tensor is copied to host memory asynchronously behind a CUDA event and handed to
the loggers once the event has completed — a step or two later, with the same step numbers. Also, with no
progress bar, `self.log(..., prog_bar=True)` would still cost an `.item()` per batch: the flag is dropped.
On the CPU nothing changes (the values are already on the host). Measured on an H100 (bench/GPU_NOTES.md):
these two remove ≈ 2.5 ms of a 68 ms GPT-124M step. They replace Lightning internals, so worker/speedups.py
installs them only on the Lightning versions they were tested with.
"""

from __future__ import annotations

import collections
from typing import Any

import torch


class AsyncStepMetrics:
    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.connector = trainer._logger_connector
        self.original = self.connector.log_metrics
        self.pending: collections.deque[tuple[Any, dict[str, Any], int]] = collections.deque()
        self.staged: dict[str, Any] = {}  # values handed in by trainctl's callbacks, logged with the next step

    def install(self, ns: Any) -> AsyncStepMetrics:
        self.connector.log_metrics = self.log_metrics
        skip_noop_metric_moves(ns)
        if not any(isinstance(cb, ns.pl.callbacks.ProgressBar) for cb in self.trainer.callbacks):
            self._drop_prog_bar()
        return self

    def stage(self, key: str, value: Any) -> None:
        """Log `value` with the step's metrics, without `self.log` (grad/norm: callbacks/grad_norm.py)."""
        self.staged[key] = value.detach() if isinstance(value, torch.Tensor) else value

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.staged:
            metrics = {**metrics, **self.staged}
            self.staged = {}
        on_device = any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in metrics.values())
        if not on_device or not self.trainer.loggers:
            self.drain(block=True)  # keep the order of points
            self.original(metrics, step)
            return
        self.connector._logged_metrics.update(metrics)
        staged = {k: v.detach().to("cpu", non_blocking=True) if isinstance(v, torch.Tensor) else v
                  for k, v in metrics.items()}
        if step is None:
            step_value = staged.pop("step", None)
            if step_value is not None:
                step = int(step_value.item() if isinstance(step_value, torch.Tensor) else step_value)
            else:
                staged.setdefault("epoch", self.trainer.current_epoch)
                step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        event = torch.cuda.Event()
        event.record()
        self.pending.append((event, staged, step))
        self.drain(block=False)

    def drain(self, block: bool) -> None:
        """Hand completed points to the loggers; with block, wait for all of them (end of a stage, an exit)."""
        while self.pending and (block or self.pending[0][0].query()):
            event, staged, step = self.pending.popleft()
            event.synchronize()
            scalars = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in staged.items()}
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics=scalars, step=step)
                logger.save()

    def _drop_prog_bar(self) -> None:
        epoch_loop = self.trainer.fit_loop.epoch_loop
        for loop in (epoch_loop, epoch_loop.val_loop, self.trainer.validate_loop, self.trainer.test_loop):
            results = getattr(loop, "_results", None)
            if results is None:
                continue

            def log(fx: str, name: str, value: Any, *args: Any, _log: Any = results.log, **kwargs: Any) -> Any:
                kwargs["prog_bar"] = False
                return _log(fx, name, value, *args, **kwargs)

            results.log = log


def _all_on(state: dict[str, Any], device: torch.device) -> bool:
    """Every tensor a `_ResultMetric` holds (its attributes and torchmetrics' state defaults) is on `device`."""
    if state.get("_parameters") or state.get("_buffers") or state.get("_modules"):
        return False
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [v for v in state.get("_defaults", {}).values() if isinstance(v, torch.Tensor)]
    return all(t.device == device for t in tensors)


def skip_noop_metric_moves(ns: Any) -> None:
    """`self.log` calls `_ResultMetric.to(value.device)` each time, which rebuilds the metric's whole `__dict__`
    (deep-copying its metadata) even when every tensor is already there: ≈ 0.5 ms per `self.log` on a CPU.
    Skip the move when nothing would move; any other call (a device change, `.cpu()`) goes through as before."""
    from importlib import import_module

    cls = import_module(f"{ns.pl.__name__}.trainer.connectors.logger_connector.result")._ResultMetric
    if getattr(cls.to, "_trainctl", False):
        return
    original = cls.to

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (len(args) == 1 and not kwargs and isinstance(args[0], torch.device) and self.is_tensor
                and _all_on(self.__dict__, args[0])):
            return self
        return original(self, *args, **kwargs)

    to._trainctl = True  # type: ignore[attr-defined]
    cls.to = to


class DrainImpl:
    """Callback: every staged point reaches the loggers at the end of each stage."""

    def __init__(self, metrics: AsyncStepMetrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics

    def on_train_end(self, *args: Any) -> None:
        if self.metrics:
            self.metrics.drain(block=True)

    def on_validation_end(self, *args: Any) -> None:
        if self.metrics:
            self.metrics.drain(block=True)

    def on_test_end(self, *args: Any) -> None:
        if self.metrics:
            self.metrics.drain(block=True)
