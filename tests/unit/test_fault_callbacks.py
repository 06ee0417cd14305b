"""The fault-injection callbacks' own logic, without a job: what the fault tests rely on them to do."""

from __future__ import annotations

import time

from trainctl.testing.faults import SlowSteps


class _Trainer:
    def __init__(self, global_step: int) -> None:
        self.global_step = global_step


def _slept(cb: SlowSteps, step: int) -> float:
    t0 = time.monotonic()
    cb.on_train_batch_end(_Trainer(step), None, None, None, 0)
    return time.monotonic() - t0


def test_slow_steps_until_a_step_then_full_speed() -> None:
    """until_step bounds the slow window (the tracking-outage test is slow through its outage only)."""
    cb = SlowSteps(seconds=0.3, until_step=2)
    assert _slept(cb, 0) >= 0.3 and _slept(cb, 1) >= 0.3
    assert _slept(cb, 2) < 0.15 and _slept(cb, 30) < 0.15  # a no-op: microseconds, far below the sleep


def test_slow_steps_without_a_bound_sleeps_after_every_step() -> None:
    cb = SlowSteps(seconds=0.2)
    assert _slept(cb, 0) >= 0.2 and _slept(cb, 1000) >= 0.2
