"""The `sweep:` section: parsing, paths against the job spec, the trials checked at submit, and the CLI's exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trainctl.errors import UserError
from trainctl.sweep.space import assignments, check_trials, missing_paths, parse_sweep, sample_points

from .test_cli_errors import assert_clean_usage_error, trainctl

ROOT = Path(__file__).resolve().parents[2]


def sweep(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"method": "random", "trials": 4, "metric": "val/loss",
                            "space": {"model.init_args.lr": {"log_uniform": [1e-4, 1e-1]},
                                      "model.init_args.hidden": {"choice": [32, 64]}}}
    return {**base, **over}


def paths(err: UserError) -> set[str]:
    return {p.path for p in err.problems}


def test_a_valid_sweep_parses_with_its_defaults() -> None:
    cfg = parse_sweep(sweep())
    assert (cfg.method, cfg.trials, cfg.max_concurrent, cfg.mode, cfg.pruner, cfg.seed) == \
        ("random", 4, 1, "min", {"kind": "none"}, 0)
    assert cfg.space["model.init_args.lr"].kind == "log_uniform"


def test_nested_space_keys_are_the_same_paths_as_dotted_ones() -> None:
    nested = parse_sweep(sweep(space={"model": {"init_args": {"lr": {"uniform": [0.1, 0.2]}}}}))
    assert list(nested.space) == ["model.init_args.lr"]


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    bad = sweep(method="grdi", trials=0, max_concurrent="2", mode="low", pruner="hyperband", metric=None, extra=1,
                space={"a": {"uniform": [2, 1]}, "b": {"log_uniform": [0, 1]}, "c": {"choice": []},
                       "d": {"gird": [1]}, "e": {"int": [1, 5, 0]}, "f": {"choice": [1, 1]}})
    with pytest.raises(UserError) as err:
        parse_sweep(bad)
    assert paths(err.value) >= {"sweep.method", "sweep.trials", "sweep.max_concurrent", "sweep.mode",
                                "sweep.pruner", "sweep.metric", "sweep.extra", "sweep.space.a.uniform",
                                "sweep.space.b.log_uniform", "sweep.space.c.choice", "sweep.space.d",
                                "sweep.space.e.int", "sweep.space.f.choice"}
    assert all(p.hint for p in err.value.problems)
    assert any("did you mean 'grid'" in p.hint for p in err.value.problems)


def test_a_grid_runs_every_point_once() -> None:
    cfg = parse_sweep({"method": "grid", "metric": "m", "space": {"a": {"grid": [1, 2, 3]}, "b": {"choice": [0, 1]}}})
    assert cfg.trials == 6 and len(cfg.grid_points()) == 6 and len({str(p) for p in cfg.grid_points()}) == 6
    with pytest.raises(UserError) as err:
        parse_sweep({"method": "grid", "metric": "m", "trials": 5, "space": {"a": {"grid": [1, 2]}}})
    assert paths(err.value) == {"sweep.trials"}
    with pytest.raises(UserError) as err:
        parse_sweep({"method": "grid", "metric": "m", "space": {"a": {"uniform": [0, 1]}}})
    assert paths(err.value) == {"sweep.method"}


def test_random_and_tpe_need_a_trial_count() -> None:
    with pytest.raises(UserError) as err:
        parse_sweep({"method": "tpe", "metric": "m", "space": {"a": {"uniform": [0, 1]}}})
    assert paths(err.value) == {"sweep.trials"}


def test_pruner_names_and_options() -> None:
    assert parse_sweep(sweep(pruner="successive_halving")).pruner == {"kind": "asha"}
    assert parse_sweep(sweep(pruner={"kind": "median", "n_warmup_steps": 2})).pruner == \
        {"kind": "median", "n_warmup_steps": 2}
    with pytest.raises(UserError) as err:
        parse_sweep(sweep(pruner={"kind": "asha", "patience": 2}))
    assert paths(err.value) == {"sweep.pruner.patience"}


def test_sampled_trials_include_each_bound_and_stay_in_range() -> None:
    cfg = parse_sweep(sweep(space={"x": {"int": [2, 10, 2]}, "y": {"log_uniform": [1e-3, 1.0]}}, trials=20))
    points = sample_points(cfg)
    assert points[0] == {"x": 2, "y": 1e-3} and points[1] == {"x": 10, "y": 1.0}
    assert all(p["x"] in (2, 4, 6, 8, 10) and 1e-3 <= p["y"] <= 1.0 for p in points)
    assert assignments({"a.b": 0.5, "c": "x"}) == ["a.b=0.5", 'c="x"']


def test_paths_must_name_fields_of_the_job_spec(raw: dict[str, Any]) -> None:
    from trainctl.spec import parse_spec

    resolved = parse_spec(raw, check_classes=False).to_dict()
    cfg = parse_sweep(sweep(space={"trainer.max_epochs": {"grid": [1]}, "seed_everything": {"grid": [1]},
                                   "model.init_args.momentum": {"grid": [0.9]}, "modle.init_args.lr": {"grid": [1]},
                                   "resources.device_per_node": {"grid": [1]}}))
    problems = {p.path: p for p in missing_paths(cfg, resolved)}
    assert set(problems) == {"sweep.space.modle.init_args.lr", "sweep.space.resources.device_per_node"}
    assert "did you mean 'model'" in problems["sweep.space.modle.init_args.lr"].hint
    assert "devices_per_node" in problems["sweep.space.resources.device_per_node"].hint


def test_a_trial_whose_spec_is_invalid_is_named(raw: dict[str, Any]) -> None:
    cfg = parse_sweep({"method": "grid", "metric": "val/loss", "space": {"resources.devices_per_node": {
        "grid": [1, 0]}, "model.init_args.hidden": {"grid": [8, "wide"]}}})
    problems = {p.path: p for p in check_trials(raw, cfg, "x.yaml")}
    assert "resources.devices_per_node" in problems and "model.init_args.hidden" in problems
    assert "resources.devices_per_node=0" in problems["resources.devices_per_node"].message


def test_cli_refuses_a_bad_sweep_with_exit_2_and_submits_nothing(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "jobs" / "digits-sweep.yaml").read_text())
    spec["workdir"] = str(tmp_path / "runs")
    spec["sweep"]["space"]["trainer.max_epoch"] = {"choice": [1, 2]}
    spec["sweep"]["method"] = "grdi"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = trainctl("submit", str(path), cwd=tmp_path)
    assert_clean_usage_error(res, "sweep.space.trainer.max_epoch", "sweep.method", "did you mean 'max_epochs'?")
    # a trial's spec that does not validate: named by its path and the trial's values
    res = trainctl("submit", str(ROOT / "jobs" / "digits-sweep.yaml"), "--set", f"workdir={tmp_path / 'runs'}",
                   "--set", "sweep.space.model.init_args.hiden={choice: [1, 2]}", cwd=tmp_path)
    assert_clean_usage_error(res, "model.init_args.hiden", "in the trial")
    assert not (tmp_path / "runs").exists()


def test_a_ray_sweep_dry_run_shows_each_trial_as_a_ray_job(tmp_path: Path) -> None:
    """A sweep on Ray validates like any other; the dry run names the driver and the Ray job of a trial, whose
    submission id names the sweep and the trial. Nothing is sent."""
    res = trainctl("submit", str(ROOT / "jobs" / "digits-sweep-ray.yaml"), "--dry-run", "--set",
                   f"workdir={tmp_path / 'runs'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("  trial ") == 4 and "python -m trainctl.sweep.driver" in res.stdout
    assert "trainctl.launchers.ray.driver" in res.stdout and "trials/0000" in res.stdout
    assert not (tmp_path / "runs").exists()


def test_a_trials_ray_job_is_named_by_its_sweep_and_index() -> None:
    from trainctl.launchers.ray.submit import submission_id
    from trainctl.spec import load_spec

    spec = load_spec(ROOT / "jobs" / "digits-ray.yaml", check_classes=False)
    sid = submission_id(spec, Path("/w/digits-sweep-ray-1a2b3c4d/trials/0003"))
    assert sid.startswith("trainctl-digits-sweep-ray-1a2b3c4d-0003-") and "_" not in sid
    assert submission_id(spec, Path("/w/digits-ray-1a2b3c4d")).startswith("trainctl-digits-ray-1a2b3c4d-")


def test_assignments_read_back_as_the_values_they_hold() -> None:
    from trainctl.spec import apply_override

    values = ["a😀", "🚀 rocket", "größe", "日本語", "tab\tquote\"back\\slash", "del\x7f nel\x85 \ufffe", 3, 0.5, True]
    params = {f"model.init_args.v{i}": v for i, v in enumerate(values)}
    raw: dict[str, Any] = {"model": {"init_args": {}}}
    for assignment in assignments(params):
        apply_override(raw, assignment)
    assert list(raw["model"]["init_args"].values()) == values
    assert assignments({"x": "a😀"}) == ['x="a😀"']


def test_the_best_so_far_shows_six_significant_digits() -> None:
    from trainctl.sweep.commands import best_so_far

    tags = {"trainctl.best_trial_index": "3", "trainctl.best_value": repr(1.4755027294158936)}
    assert best_so_far(tags) == "; best so far: trial 3 (1.4755)"
    assert best_so_far({**tags, "trainctl.best_value": "0.4163568913936615"}) == "; best so far: trial 3 (0.416357)"
    assert best_so_far({}) == ""
