"""The agreed stop's decisions (callbacks/preemption.py): how often the ranks reduce their flags, what the reduced
flags mean, and when a stop agreed on a batch is taken."""

from __future__ import annotations

import signal

from trainctl.callbacks.preemption import AGREE_EVERY_S, MAX_AGREE_STEPS, after_reduce, agree_every, batch_end_action


def test_every_step_when_steps_are_slow() -> None:
    assert agree_every(0.5) == 1 and agree_every(AGREE_EVERY_S) == 1


def test_about_agree_every_s_of_fast_steps_bounded() -> None:
    assert agree_every(0.004) == int(AGREE_EVERY_S / 0.004)
    assert agree_every(1e-5) == MAX_AGREE_STEPS
    assert all(1 <= agree_every(s / 1e4) <= MAX_AGREE_STEPS for s in range(0, 1000))


def test_no_step_time_yet_means_the_next_step() -> None:
    # The first step has no step time: a stop must not wait MAX_AGREE_STEPS (possibly slow) steps.
    assert agree_every(0.0) == 1


def _reduced(*ranks: tuple[int, bool, float]) -> list[float]:
    """The MAX reduce of each rank's [signal number, stop wanted, step time], as the gloo group computes it."""
    return [max(float(column) for column in values) for values in zip(*ranks)]


def test_one_ranks_signal_or_stop_is_every_ranks() -> None:
    quiet, signalled, stopping = (0, False, 0.01), (int(signal.SIGTERM), False, 0.01), (0, True, 0.01)
    assert after_reduce(_reduced(quiet, quiet), 40)[:2] == (0, False)
    assert after_reduce(_reduced(quiet, signalled, quiet), 40)[:2] == (signal.SIGTERM, False)
    assert after_reduce(_reduced(stopping, quiet), 40)[:2] == (0, True)
    # the warning (USR2) on one rank and a preemption (TERM) on another: one cause for all
    both = _reduced((int(signal.SIGUSR2), False, 0.01), (int(signal.SIGTERM), False, 0.01))
    assert after_reduce(both, 40)[0] == max(signal.SIGUSR2, signal.SIGTERM)


def test_the_next_reduce_is_paced_by_the_slowest_rank() -> None:
    fast, slow = (0, False, 1e-4), (0, False, AGREE_EVERY_S / 2)
    assert after_reduce(_reduced(fast, slow), 100)[2] == 100 + agree_every(AGREE_EVERY_S / 2) == 102
    assert after_reduce(_reduced(fast, fast), 100)[2] == 100 + MAX_AGREE_STEPS
    assert after_reduce(_reduced((0, False, 0.0)), 0)[2] == 1, "no step time yet: reduce again at the next step"


def test_every_rank_stops_at_the_same_step_soon_after_a_signal() -> None:
    """Ranks of different speeds, one signalled at step 37: each launches and reads the same reduces (launched at
    step k, read at k+1), so all reach the stop at one step, at most a reduce interval plus a step later."""
    step_s = [1e-4, 3e-4, 2e-3]  # per rank
    signal_at, signalled_rank = 37, 1
    stopped_at = []
    for _ in step_s:
        next_launch, pending, stop_step = 0, None, None
        for step in range(1, 500):
            signalled = False
            if pending is not None:
                launched_at, flags = pending
                signum, _, next_launch = after_reduce(flags, launched_at)
                signalled, pending = bool(signum), None
            if batch_end_action(signalled, False, last_batch=False) == "stop":
                stop_step = step
                break
            if step >= next_launch:
                ranks = [(int(signal.SIGTERM) if r == signalled_rank and step >= signal_at else 0, False, s)
                         for r, s in enumerate(step_s)]
                pending = (step, _reduced(*ranks))
        stopped_at.append(stop_step)
    assert len(set(stopped_at)) == 1, stopped_at
    assert signal_at < stopped_at[0] <= signal_at + agree_every(max(step_s)) + 1


def test_a_stop_on_an_epochs_last_batch_waits_for_its_end() -> None:
    assert batch_end_action(signalled=False, deferred=False, last_batch=False) == "go"
    assert batch_end_action(signalled=True, deferred=False, last_batch=False) == "stop"
    assert batch_end_action(signalled=True, deferred=False, last_batch=True) == "defer"
    # deferred: validation and the epoch-end hooks run, the stop is taken at the epoch's end
    assert batch_end_action(signalled=True, deferred=True, last_batch=False) == "go"
