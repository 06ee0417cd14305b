"""The sweep engine on a synthetic objective whose best configuration is known: real Optuna, real journal file."""

from __future__ import annotations

from pathlib import Path

from trainctl.sweep import engine
from trainctl.sweep.space import parse_sweep

RUNGS = 12  # validations of a trial that is never pruned


def objective(x: float, rung: int) -> float:
    """A learning curve: every configuration improves with rungs; x = 0.3 is the best at every rung."""
    return (x - 0.3) ** 2 + 1.0 / rung


def test_asha_prunes_most_trials_early_and_still_finds_the_best(tmp_path: Path) -> None:
    grid = [round(0.1 * i, 1) for i in range(9)]
    cfg = parse_sweep({"method": "grid", "metric": "val/loss", "pruner": "asha", "max_concurrent": 2,
                       "space": {"x": {"grid": grid}}})
    engine.create(tmp_path, cfg)
    spent, pruned, values = 0, 0, {}
    for index in range(cfg.trials):
        number, trial_id, params = engine.ask(tmp_path, cfg, index)
        for rung in range(1, RUNGS + 1):
            value = objective(params["x"], rung)
            spent += 1
            if engine.report(tmp_path, cfg, trial_id, rung, value):
                engine.tell(tmp_path, cfg, number, "pruned")
                pruned += 1
                break
        else:
            engine.tell(tmp_path, cfg, number, "complete", value)
            values[params["x"]] = value
    study = engine.load(tmp_path, cfg)
    assert sorted(t.params["x"] for t in study.trials) == grid  # the grid gave each point to one trial
    assert pruned >= cfg.trials / 2
    assert spent <= 0.5 * RUNGS * cfg.trials
    assert study.best_trial.params == {"x": 0.3}


def test_a_repeated_report_and_a_second_tell_change_nothing(tmp_path: Path) -> None:
    cfg = parse_sweep({"method": "random", "trials": 2, "metric": "m", "pruner": "median",
                       "space": {"x": {"uniform": [0.0, 1.0]}}})
    engine.create(tmp_path, cfg)
    number, trial_id, _ = engine.ask(tmp_path, cfg, 0)
    engine.report(tmp_path, cfg, trial_id, 1, 0.5)
    engine.report(tmp_path, cfg, trial_id, 1, 0.9)  # a resumed attempt validates rung 1 again
    engine.tell(tmp_path, cfg, number, "complete", 0.4)
    engine.tell(tmp_path, cfg, number, "fail")
    (trial,) = engine.load(tmp_path, cfg).trials
    assert trial.intermediate_values == {1: 0.5} and trial.value == 0.4 and trial.state.name == "COMPLETE"


def test_trials_asked_together_draw_different_values(tmp_path: Path) -> None:
    cfg = parse_sweep({"method": "tpe", "trials": 4, "metric": "m", "seed": 7,
                       "space": {"x": {"uniform": [0.0, 1.0]}}})
    engine.create(tmp_path, cfg)
    drawn = [engine.ask(tmp_path, cfg, i)[2]["x"] for i in range(4)]
    assert len(set(drawn)) == 4
