"""The `sweep:` section: the search space over spec paths, the method, how many trials and how to rank them.

    sweep:
      method: tpe                 # grid | random | tpe
      trials: 8                   # grid: the number of grid points (may be left out)
      max_concurrent: 2
      metric: val/loss
      mode: min
      pruner: asha                # none | asha (successive halving) | median, or {kind: asha, min_resource: 1, ...}
      seed: 0
      space:
        model.init_args.lr: {log_uniform: [1.0e-4, 1.0e-1]}
        model.init_args.hidden: {choice: [64, 128, 256]}
        seed_everything: {grid: [1, 2, 3]}

Parsing reports every problem at once, each naming its `sweep.` path, what is valid and a HINT (as the job spec's
fields do). Checking the trials against the job spec is `check_trials`: every grid point, or a seeded sample.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from trainctl.errors import Problem, UserError, did_you_mean

KINDS = ("grid", "choice", "uniform", "log_uniform", "int")
METHODS = ("grid", "random", "tpe")
PRUNERS = {"none": "none", "asha": "asha", "successive_halving": "asha", "median": "median"}
PRUNER_KEYS = {"asha": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
               "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"), "none": ()}
KEYS = ("method", "trials", "max_concurrent", "metric", "mode", "pruner", "seed", "space")
SAMPLE = 8  # random/tpe: trials' specs checked at submit, besides each dimension's bounds
MAX_TRIALS = 100_000


@dataclass(frozen=True)
class Dim:
    path: str
    kind: str  # one of KINDS
    values: tuple[Any, ...] = ()  # grid, choice
    lo: float = 0.0
    hi: float = 0.0
    step: int = 1  # int

    def to_raw(self) -> dict[str, Any]:
        if self.kind in ("grid", "choice"):
            return {self.kind: list(self.values)}
        return {self.kind: [self.lo, self.hi] + ([self.step] if self.kind == "int" and self.step != 1 else [])}


@dataclass
class SweepConfig:
    space: dict[str, Dim]
    method: str = "random"
    trials: int = 1
    max_concurrent: int = 1
    metric: str = ""
    mode: str = "min"
    pruner: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    seed: int = 0

    def to_raw(self) -> dict[str, Any]:
        return {"method": self.method, "trials": self.trials, "max_concurrent": self.max_concurrent,
                "metric": self.metric, "mode": self.mode, "pruner": self.pruner, "seed": self.seed,
                "space": {p: d.to_raw() for p, d in self.space.items()}}

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of a grid sweep, in a fixed order (the product of the dimensions)."""
        names = list(self.space)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.space[n].values for n in names))]

    def distributions(self) -> dict[str, Any]:
        """Optuna's distribution for each path (grid dimensions are categorical to the samplers)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for path, d in self.space.items():
            if d.kind in ("grid", "choice"):
                out[path] = CategoricalDistribution(list(d.values))
            elif d.kind == "int":
                out[path] = IntDistribution(int(d.lo), int(d.hi), step=d.step)
            else:
                out[path] = FloatDistribution(d.lo, d.hi, log=d.kind == "log_uniform")
        return out


def parse_sweep(raw: Any) -> SweepConfig:
    """The `sweep:` mapping → SweepConfig; every problem at once (UserError)."""
    cfg, problems = read_sweep(raw)
    if problems:
        raise UserError(problems)
    return cfg


def read_sweep(raw: Any) -> tuple[SweepConfig, list[Problem]]:
    """The SweepConfig as far as it is valid (its valid dimensions), and every problem."""
    problems: list[Problem] = []
    if not isinstance(raw, dict):
        return SweepConfig({}), [Problem("sweep", "expected a mapping", "write `sweep:` with `space:`, `metric:`, "
                                         "`trials:` (see jobs/digits-sweep.yaml)")]
    for key in raw:
        if key not in KEYS:
            problems.append(Problem(f"sweep.{key}", "unknown key",
                                    did_you_mean(str(key), KEYS) or f"valid keys: {', '.join(KEYS)}"))
    space = _space(raw.get("space"), problems)
    method = _choice(raw, "method", METHODS, "random", problems)
    mode = _choice(raw, "mode", ("min", "max"), "min", problems)
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        problems.append(Problem("sweep.metric", "is required: the metric that ranks trials",
                                "name a metric the module logs at validation, e.g. `metric: val/loss`"))
        metric = ""
    max_concurrent = _int(raw, "max_concurrent", 1, 1, 10_000, problems)
    seed = _int(raw, "seed", 0, 0, 2**32 - 1, problems)
    pruner = _pruner(raw.get("pruner", "none"), problems)
    cfg = SweepConfig(space, method, 1, max_concurrent, metric, mode, pruner, seed)
    if method == "grid" and space:
        not_grid = [p for p, d in space.items() if d.kind not in ("grid", "choice")]
        if not_grid:
            problems.append(Problem("sweep.method", f"a grid needs finite values; {', '.join(not_grid)} is not "
                                    "grid/choice", "use method random or tpe, or give those paths {grid: [...]}"))
        size = math.prod(len(d.values) for d in space.values()) if not not_grid else 1
        cfg.trials = _int(raw, "trials", size, 1, MAX_TRIALS, problems)
        if "trials" in raw and cfg.trials != size and not not_grid:
            problems.append(Problem("sweep.trials", f"{raw['trials']} differs from the grid's {size} points",
                                    f"leave `trials:` out (a grid runs each point once) or write {size}"))
    elif "trials" not in raw:
        problems.append(Problem("sweep.trials", "is required for method random/tpe",
                                "write how many trials to run, e.g. `trials: 8`"))
    else:
        cfg.trials = _int(raw, "trials", 1, 1, MAX_TRIALS, problems)
    return cfg, problems


def _choice(raw: dict[str, Any], key: str, valid: tuple[str, ...], default: str, problems: list[Problem]) -> str:
    value = raw.get(key, default)
    if value not in valid:
        problems.append(Problem(f"sweep.{key}", f"{value!r} is not valid; valid: {', '.join(valid)}",
                                did_you_mean(str(value), valid) or f"use one of: {', '.join(valid)}"))
        return default
    return str(value)


def _int(raw: dict[str, Any], key: str, default: int, lo: int, hi: int, problems: list[Problem]) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        problems.append(Problem(f"sweep.{key}", f"{value!r} is not an integer from {lo} to {hi}",
                                f"write an integer from {lo} to {hi}"))
        return default
    return value


def _pruner(raw: Any, problems: list[Problem]) -> dict[str, Any]:
    spec = {"kind": raw} if raw is None or isinstance(raw, str) else raw
    if not isinstance(spec, dict):
        problems.append(Problem("sweep.pruner", f"expected a name or a mapping, got {raw!r}",
                                "write `pruner: asha`, `pruner: median` or `pruner: none`"))
        return {"kind": "none"}
    kind = PRUNERS.get(str(spec.get("kind") if spec.get("kind") is not None else "none"))
    if kind is None:
        problems.append(Problem("sweep.pruner", f"{spec.get('kind')!r} is not a pruner; valid: {', '.join(PRUNERS)}",
                                did_you_mean(str(spec.get("kind")), PRUNERS) or "use asha, median or none"))
        return {"kind": "none"}
    out: dict[str, Any] = {"kind": kind}
    for key, value in spec.items():
        if key == "kind":
            continue
        if key not in PRUNER_KEYS[kind]:
            problems.append(Problem(f"sweep.pruner.{key}", f"not an option of the {kind} pruner",
                                    f"valid: {', '.join(PRUNER_KEYS[kind]) or 'none'}"))
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(Problem(f"sweep.pruner.{key}", f"{value!r} is not a non-negative integer",
                                    "write an integer, e.g. 1"))
        else:
            out[key] = value
    return out


def _space(raw: Any, problems: list[Problem]) -> dict[str, Dim]:
    example = "e.g. `model.init_args.lr: {log_uniform: [1.0e-4, 1.0e-1]}`"
    if not isinstance(raw, dict) or not raw:
        problems.append(Problem("sweep.space", "is required: a mapping of spec paths to their values",
                                f"write one line per path, {example}"))
        return {}
    dims: dict[str, Dim] = {}
    for path, value in _flat(raw).items():
        where = f"sweep.space.{path}"
        if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in KINDS:
            got = ", ".join(map(str, value)) if isinstance(value, dict) else repr(value)
            hint = did_you_mean(got, KINDS) if isinstance(value, dict) and len(value) == 1 else None
            problems.append(Problem(where, f"expected one of {', '.join(KINDS)}, got {got}",
                                    hint or "write {grid: [1, 2]}, {choice: [a, b]}, {uniform: [lo, hi]}, "
                                    "{log_uniform: [lo, hi]}, {int: [lo, hi]}"))
            continue
        kind, values = next(iter(value.items()))
        dim = _dim(str(path), kind, values, where, problems)
        if dim is not None:
            dims[str(path)] = dim
    return dims


def _flat(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys and nested mappings alike (`--set sweep.space.model.init_args.lr=...` nests them)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        nested = isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values())
        out.update(_flat(value, f"{path}.") if nested else {path: value})
    return out


def _dim(path: str, kind: str, values: Any, where: str, problems: list[Problem]) -> Dim | None:
    where = f"{where}.{kind}"
    if kind in ("grid", "choice"):
        ok = isinstance(values, list) and values and all(isinstance(v, (str, int, float, bool)) or v is None
                                                         for v in values)
        if not ok:
            problems.append(Problem(where, f"expected a non-empty list of plain values, got {values!r}",
                                    "write e.g. [64, 128, 256] (numbers, strings, true/false, null)"))
            return None
        if len({json.dumps(v) for v in values}) != len(values):
            problems.append(Problem(where, "has a value twice", "list each value once"))
            return None
        return Dim(path, kind, tuple(values))
    is_int = kind == "int"
    number = (int,) if is_int else (int, float)
    shape = isinstance(values, list) and len(values) in ((2, 3) if is_int else (2,))
    if not shape or not all(isinstance(v, number) and not isinstance(v, bool) for v in values):
        form = "[lo, hi] or [lo, hi, step] of integers" if is_int else "[lo, hi] of numbers"
        problems.append(Problem(where, f"expected {form}, got {values!r}", f"write {form}, e.g. "
                                f"{'[1, 8]' if is_int else '[1.0e-4, 1.0e-1]'}"))
        return None
    lo, hi = values[0], values[1]
    if not lo < hi:
        problems.append(Problem(where, f"low {lo} is not below high {hi}", "write [low, high] with low < high"))
        return None
    if kind == "log_uniform" and lo <= 0:
        problems.append(Problem(where, f"a log scale needs a low above 0, got {lo}",
                                "use a positive low, e.g. 1.0e-5, or `uniform`"))
        return None
    step = values[2] if is_int and len(values) == 3 else 1
    if step < 1:
        problems.append(Problem(where, f"step {step} is below 1", "write a step of 1 or more"))
        return None
    return Dim(path, kind, (), float(lo) if not is_int else lo, float(hi) if not is_int else hi, step)


# ---------------------------------------------------------------- trials against the job spec


# Characters YAML does not read back as themselves inside a double-quoted scalar (it rejects them, or folds NEL).
_YAML_UNSAFE = re.compile("[\x7f-\x9f\ufffe\uffff]")


def assignments(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as `--set` assignments: JSON values, which are YAML. Characters stay literal: JSON's
    ASCII escapes write an emoji as a surrogate pair, which YAML reads back as two lone surrogates."""
    return [f"{path}={_as_yaml(value)}" for path, value in params.items()]


def _as_yaml(value: Any) -> str:
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


def sample_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The trials checked at submit: every grid point; else each dimension's low and high, and a seeded sample."""
    if cfg.method == "grid":
        return cfg.grid_points()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    low = {p: (d.values[0] if d.values else (int(d.lo) if d.kind == "int" else d.lo)) for p, d in cfg.space.items()}
    high = {p: (d.values[-1] if d.values else (int(d.hi) if d.kind == "int" else d.hi)) for p, d in cfg.space.items()}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    dists = cfg.distributions()
    sampled = [study.ask(dists).params for _ in range(min(SAMPLE, cfg.trials))]
    return [low, high, *sampled]


def missing_paths(cfg: SweepConfig, resolved: dict[str, Any]) -> list[Problem]:
    """Paths that name no field of the job spec. A key under an `init_args` mapping may be a default of the class's
    signature: the class check of each trial's spec decides those."""
    problems = []
    for path in cfg.space:
        node: Any = resolved
        parts = path.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and i > 0 and parts[i - 1] == "init_args":
                break
            else:
                keys = list(node) if isinstance(node, dict) else []
                hint = did_you_mean(part, keys) or (f"fields there: {', '.join(map(str, keys))}" if keys else
                                                    "name a field of the job spec, e.g. model.init_args.lr")
                problems.append(Problem(f"sweep.space.{path}", f"no field {'.'.join(parts[: i + 1])!r} in the "
                                        "job spec", hint))
                break
    return problems


def check_trials(raw: dict[str, Any], cfg: SweepConfig, source: str) -> list[Problem]:
    """Each checked trial's spec (the job spec with the trial's values set) must validate; problems name the
    trial's values. One problem per spec path."""
    from trainctl.spec import apply_override, parse_spec

    found: dict[str, Problem] = {}
    for point in sample_points(cfg):
        trial = copy.deepcopy(raw)
        try:
            for assignment in assignments(point):
                apply_override(trial, assignment)
            parse_spec(trial, source, from_source=True)
        except UserError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            for p in err.problems:
                found.setdefault(p.path, Problem(p.path, f"in the trial {shown}: {p.message}", p.hint))
    return list(found.values())
