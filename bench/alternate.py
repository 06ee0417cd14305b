"""A against B within one run, repeated until each figure is known to ±target: figures that a rerun reproduces.

Each round runs every variant once, the order reversed every other round (A B C, C B A, …), so that a load which
drifts over the run weighs on every variant alike. A figure is made of pairs from the same round (B ÷ A, or
B - A): its value is the median of those pairs, and its spread a bootstrap 95 % interval of that median (plus the
pairs' quartiles and their count). Past `min_rounds`, rounds go on until every ratio's interval lies within
±target of its value, `max_rounds` are done, or `budget_s` is spent; `converged` says which. Two runs whose
intervals are each within ±1.5 % agree within about ±3 %. On a shared machine the pairs are noisy and the interval
says so; the median of pairs is robust to the odd run that a neighbour's job slowed down.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

MIN_PAIRS = 5  # a bootstrap interval of a median from fewer pairs is the pairs' range, not a confidence
# name -> (numerator variant, denominator variant, "ratio" | "diff_ms")
Figures = dict[str, tuple[str, str, str]]


def spread(values: list[float], resamples: int = 2000) -> dict[str, Any]:
    """The median of `values`, a bootstrap 95 % interval of it (seeded: the same values, the same interval), the
    quartiles and the interval's half-width relative to the median."""
    if not values:
        return {"n": 0}
    med = statistics.median(values)
    rng = random.Random(0)
    boots = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    lo, hi = boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]
    q1, q3 = (statistics.quantiles(values, n=4)[i] for i in (0, 2)) if len(values) > 1 else (med, med)
    return {"median": med, "ci95": [lo, hi], "iqr": [q1, q3], "n": len(values),
            "half_width_rel": (hi - lo) / 2 / abs(med) if med else float("nan")}


def pairs(runs: dict[str, list[dict[str, Any]]], num: str, den: str, kind: str, key: str) -> list[float]:
    """One value per round in which both variants ran."""
    n = min(len(runs[num]), len(runs[den]))
    a, b = [r[key] for r in runs[num][:n]], [r[key] for r in runs[den][:n]]
    if kind == "ratio":
        return [x / y for x, y in zip(a, b)]
    return [1e3 * (x - y) for x, y in zip(a, b)]


def alternate(variants: list[str], run_one: Callable[[str, int], dict[str, Any]], figures: Figures, *,
              min_rounds: int, max_rounds: int, target: float = 0.015, budget_s: float | None = None,
              key: str = "step_s") -> dict[str, Any]:
    """Run the rounds; `run_one(variant, round)` returns one run's result, holding `key` (seconds)."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    started = time.monotonic()
    rounds, converged = 0, False
    spreads: dict[str, dict[str, Any]] = {}
    while True:
        for variant in variants if rounds % 2 == 0 else list(reversed(variants)):
            runs[variant].append(run_one(variant, rounds))
        rounds += 1
        spreads = {name: spread(pairs(runs, num, den, kind, key)) for name, (num, den, kind) in figures.items()}
        converged = all(s["n"] >= MIN_PAIRS and s["half_width_rel"] <= target for name, s in spreads.items()
                        if figures[name][2] == "ratio")
        over_budget = budget_s is not None and time.monotonic() - started > budget_s
        if rounds >= min_rounds and (converged or over_budget or rounds >= max_rounds):
            break
    return {"runs": runs, "rounds": rounds, "converged": converged, "target": target,
            "values": {name: s.get("median", float("nan")) for name, s in spreads.items()}, "spread": spreads}
