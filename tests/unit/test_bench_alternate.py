"""bench.alternate: rounds in alternating order, paired figures, a seeded interval, and when the rounds stop."""

from __future__ import annotations

import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT))  # the bench package lives beside src/, not in it

from bench.alternate import alternate, pairs, spread


def test_spread_is_seeded_and_holds_the_median() -> None:
    values = [1.00, 1.04, 0.97, 1.02, 1.10, 0.99, 1.01]
    s = spread(values)
    assert s == spread(values), "the same pairs give the same interval"
    assert s["median"] == 1.01 and s["n"] == 7
    lo, hi = s["ci95"]
    assert min(values) <= lo <= s["median"] <= hi <= max(values)
    assert s["iqr"][0] <= s["median"] <= s["iqr"][1]
    assert s["half_width_rel"] == pytest.approx((hi - lo) / 2 / 1.01)
    assert spread([])["n"] == 0


def test_pairs_are_taken_within_a_round() -> None:
    runs = {"a": [{"t": 1.0}, {"t": 2.0}], "b": [{"t": 1.5}, {"t": 2.2}, {"t": 9.0}]}
    assert pairs(runs, "b", "a", "ratio", "t") == [1.5, pytest.approx(1.1)]
    assert pairs(runs, "b", "a", "diff_ms", "t") == [500.0, pytest.approx(200.0)]


def test_rounds_reverse_the_order_and_stop_once_within_target() -> None:
    order: list[tuple[int, str]] = []
    steps = {"a": 1.0, "b": 1.2}

    def one(variant: str, rnd: int) -> dict[str, float]:
        order.append((rnd, variant))
        return {"step_s": steps[variant]}

    out = alternate(["a", "b"], one, {"ratio": ("b", "a", "ratio")}, min_rounds=2, max_rounds=20)
    assert order[:4] == [(0, "a"), (0, "b"), (1, "b"), (1, "a")]
    assert out["converged"] and out["rounds"] == 5, "identical pairs: the interval is nil once there are enough"
    assert out["values"]["ratio"] == pytest.approx(1.2)


def test_noisy_pairs_run_to_max_rounds_unconverged() -> None:
    noise = iter([1.0, 1.5, 1.0, 0.8, 1.0, 1.6, 1.0, 0.7, 1.0, 1.4, 1.0, 0.9] * 2)
    out = alternate(["a", "b"], lambda v, r: {"step_s": next(noise)}, {"ratio": ("b", "a", "ratio")},
                    min_rounds=3, max_rounds=6, target=0.015)
    assert out["rounds"] == 6 and not out["converged"]
    assert out["spread"]["ratio"]["half_width_rel"] > 0.015
