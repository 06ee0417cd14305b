"""How often the ranks reduce their stop flags (callbacks/preemption.py)."""

from __future__ import annotations

from trainctl.callbacks.preemption import AGREE_EVERY_S, MAX_AGREE_STEPS, agree_every


def test_every_step_when_steps_are_slow() -> None:
    assert agree_every(0.5) == 1 and agree_every(AGREE_EVERY_S) == 1


def test_about_agree_every_s_of_fast_steps_bounded() -> None:
    assert agree_every(0.004) == int(AGREE_EVERY_S / 0.004)
    assert agree_every(1e-5) == MAX_AGREE_STEPS
    assert all(1 <= agree_every(s / 1e4) <= MAX_AGREE_STEPS for s in range(0, 1000))


def test_no_step_time_yet_means_the_next_step() -> None:
    # The first step has no step time: a stop must not wait MAX_AGREE_STEPS (possibly slow) steps.
    assert agree_every(0.0) == 1
