"""The job spec: one YAML file is the whole job.

Every default lives in the dataclasses below (and nowhere else); `load_spec` reads YAML, applies `--set`
overrides, checks every field and reports all problems at once, each naming its YAML path, what is valid
and a HINT. Class paths are imported and their init_args type-checked by `trainctl.components`.
"""

# ruff: noqa: RUF009  (`_f` only wraps dataclasses.field with range metadata; it is not a mutable default)
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Union

import yaml

from trainctl.errors import Problem, UserError, did_you_mean
from trainctl.spec_checks import CONTROL, SAFE_NAME, apply_override, check_devices, check_tree, semantic_checks, shown

__all__ = ["SAFE_NAME", "Spec", "apply_override", "load_spec", "parse_spec", "resolve_env", "spec_from_dict"]

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


class Accelerator(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Mode(str, Enum):
    min = "min"
    max = "max"


class OnFailure(str, Enum):
    requeue = "requeue"  # infrastructure failures are retried from the last good checkpoint while max_restarts lasts
    fail = "fail"  # infrastructure failures end the run FAILED; preemption and time limits still requeue


class BackendKind(str, Enum):
    local = "local"
    slurm = "slurm"
    ray = "ray"


def _f(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
       doc: str = "", factory: Any = None) -> Any:
    meta = {"lo": lo, "hi": hi, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Component:
    """A class in LightningCLI form: `class_path` plus `init_args` (nested class_path objects allowed)."""

    class_path: str = _f(doc="importable dotted path, e.g. trainctl.examples.digits.DigitsClassifier")
    init_args: dict[str, Any] = _f(factory=dict, doc="keyword arguments, checked against the signature")


@dataclass
class Resources:
    nodes: int = _f(1, lo=1, hi=1024, doc="machines; >1 needs backend slurm or ray")
    devices_per_node: int = _f(1, lo=1, hi=64, doc="ranks per node: GPUs, or processes on CPU")
    accelerator: Accelerator = _f(Accelerator.cpu, doc="cpu | gpu | auto")
    cpus_per_task: int = _f(1, lo=1, hi=512, doc="CPU cores per rank")
    mem_gb: float = _f(4.0, lo=0.1, hi=16384, doc="host memory per node, GiB")
    time_min: int = _f(60, lo=1, hi=60 * 24 * 30, doc="wall-clock limit per attempt, minutes")


@dataclass
class Checkpoint:
    monitor: str | None = _f(None, doc="metric for top-k (e.g. val/loss); none keeps only resume checkpoints")
    mode: Mode = _f(Mode.min, doc="min | max")
    save_top_k: int = _f(1, lo=-1, hi=1000, doc="best checkpoints kept by `monitor` (-1 = all)")
    save_last: bool = _f(True, doc="mirror the newest resume checkpoint to MLflow (checkpoints/last)")
    every_n_train_steps: int | None = _f(None, lo=1, hi=10**9, doc="resume checkpoint every N steps")
    every_n_minutes: float | None = _f(None, lo=0.05, hi=10**6, doc="resume checkpoint every N minutes")
    async_save: bool = _f(True, doc="write in the background; training blocks only for the state copy")
    keep_resume: int = _f(2, lo=1, hi=100, doc="resume checkpoints kept (the newest good one is never deleted)")


@dataclass
class EarlyStopping:
    monitor: str = _f(doc="metric to watch, e.g. val/loss")
    mode: Mode = _f(Mode.min, doc="min | max")
    patience: int = _f(3, lo=0, hi=10**6, doc="validation checks without improvement before stopping")
    min_delta: float = _f(0.0, lo=0, hi=1e12, doc="smallest change that counts as improvement")


@dataclass
class FaultTolerance:
    max_restarts: int = _f(3, lo=0, hi=1000, doc="requeues after preemption, time limit or an infrastructure "
                           "failure (a lost rank, a network error, a stall)")
    on_failure: OnFailure = _f(OnFailure.requeue, doc="requeue | fail: what an infrastructure failure does")
    retry_user_errors: int = _f(0, lo=0, hi=1000, doc="times an exception raised from your code is retried "
                                "(0: the run ends FAILED at once)")
    collective_timeout_s: float = _f(300.0, lo=5, hi=86400, doc="a stuck or dead rank fails the job after this")
    signal_lead_s: int = _f(60, lo=5, hi=3600, doc="warning signal this long before the time limit")


@dataclass
class Register:
    name: str = _f(doc="registered model that each FINISHED run's best checkpoint becomes a version of")
    alias: str | None = _f(None, doc="alias moved to that version, e.g. champion")


@dataclass
class Tracking:
    uri: str | None = _f(None, doc="MLflow URI; default MLFLOW_TRACKING_URI, else sqlite in workdir")
    log_every_n_steps: int = _f(1, lo=1, hi=10**6, doc="step metrics logged every N steps")
    log_grad_norm: bool = _f(True, doc="log the global L2 norm of the gradients (grad/norm)")
    log_checkpoints: bool = _f(True, doc="mirror best/last checkpoints to the MLflow run")
    system_metrics: float | None = _f(10.0, lo=0, hi=86400, doc="seconds between samples of each node's CPU, "
                                      "memory, disk, network, GPUs (system/<host>/…); 0 or null = off")
    redact: list[str] = _f(factory=list, doc="spec paths whose values are secret (never sent to MLflow)")
    register: Register | None = _f(None, doc="hand the best checkpoint to the Model Registry (optional)")


@dataclass
class SlurmOptions:
    partition: str | None = _f(None, doc="sbatch --partition")
    account: str | None = _f(None, doc="sbatch --account")
    qos: str | None = _f(None, doc="sbatch --qos")
    constraint: str | None = _f(None, doc="sbatch --constraint")
    gpus_per_node: int | None = _f(None, lo=0, hi=64, doc="default: devices_per_node when accelerator is gpu")
    setup: list[str] = _f(factory=list, doc="shell lines run before srun (module load …)")
    sbatch: dict[str, Any] = _f(factory=dict, doc="extra sbatch options, e.g. {exclusive: true}")


@dataclass
class RayOptions:
    address: str = _f("http://127.0.0.1:8265", doc="Ray Jobs API (dashboard) address")
    cpus_per_worker: float | None = _f(None, lo=0.1, hi=512, doc="default: resources.cpus_per_task")
    env_vars: dict[str, str] = _f(factory=dict, doc="extra environment for the Ray job")
    spread: bool = _f(True, doc="place workers on distinct nodes (SPREAD)")


@dataclass
class Backend:
    kind: BackendKind = _f(BackendKind.local, doc="local | slurm | ray")
    slurm: SlurmOptions = _f(factory=SlurmOptions)
    ray: RayOptions = _f(factory=RayOptions)


@dataclass
class Spec:
    name: str = _f(doc="job name: letters, digits, . _ - (≤ 64)")
    model: Component = _f(doc="the LightningModule")
    data: Component | None = _f(None, doc="the LightningDataModule (optional if the module has loaders)")
    experiment: str = _f("trainctl", doc="MLflow experiment")
    seed_everything: int | None = _f(42, lo=0, hi=2**32 - 1, doc="seed for every rank; none = not seeded")
    trainer: dict[str, Any] = _f(factory=dict, doc="Lightning Trainer arguments trainctl does not own")
    callbacks: list[Component] = _f(factory=list, doc="extra Lightning callbacks")
    resources: Resources = _f(factory=Resources)
    checkpoint: Checkpoint = _f(factory=Checkpoint)
    early_stopping: EarlyStopping | None = _f(None, doc="optional")
    fault_tolerance: FaultTolerance = _f(factory=FaultTolerance)
    tracking: Tracking = _f(factory=Tracking)
    workdir: str = _f("runs", doc="run directories (shared storage on clusters)")
    backend: Backend = _f(factory=Backend)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- typed loading


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " | ".join(m.value for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, meta: dict[str, Any], problems: list[Problem]) -> Any:
    doc = f" ({meta['doc']})" if meta.get("doc") else ""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if dataclasses.is_dataclass(inner[0]) or not isinstance(inner[0], type):
            return _convert(inner[0], value, path, meta, problems)
        before = len(problems)
        out = _convert(inner[0], value, path, meta, problems)
        if len(problems) > before and problems[-1].message.startswith("expected "):
            problems[-1] = Problem(path, f"expected {_type_name(tp)}, got {shown(value)}",
                                   f"write {_type_name(tp)}{doc}")
        return out
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if isinstance(tp, type) and issubclass(tp, Enum):
        choices = [m.value for m in tp]
        if isinstance(value, str) and value in choices:
            return tp(value)
        hint = did_you_mean(str(value), choices) or f"use one of: {', '.join(choices)}"
        problems.append(Problem(path, f"{shown(value)} is not valid; valid: {', '.join(choices)}", hint))
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected {_type_name(tp)}, got {shown(value)}",
                                    f"write a YAML list (`[]` for none){doc}"))
            return None
        return [_convert(item_tp, v, f"{path}[{i}]", {}, problems) for i, v in enumerate(value)]
    if origin is dict:
        return _convert_dict(tp, value, path, doc, problems)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        problems.append(Problem(path, f"expected {_type_name(tp)}, got {shown(value)}",
                                f"write {_type_name(tp)}{doc}"))
        return None
    if tp is str and CONTROL.search(value):
        problems.append(Problem(path, f"{shown(value)} contains a control character (NUL, newline, …)",
                                "write it on one line, without control characters"))
        return None
    if tp is float and not math.isfinite(value):
        problems.append(Problem(path, f"{value!r} is not a finite number", f"write a finite number{doc}"))
        return None
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        problems.append(Problem(path, f"{shown(value)} is out of range; valid: {lo} to {hi}",
                                f"pick a value from {lo} to {hi}{doc}"))
        return None
    return float(value) if tp is float else value


def _convert_dict(tp: Any, value: Any, path: str, doc: str, problems: list[Problem]) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(path, f"expected a mapping, got {shown(value)}",
                                f"write `key: value` lines (`{{}}` for none){doc}"))
        return None
    _, value_tp = typing.get_args(tp)
    for key, item in value.items():
        if not isinstance(key, str):
            problems.append(Problem(_join(path, str(key)), f"key {key!r} is not a string", "quote the key"))
        elif value_tp is str and not isinstance(item, str):
            problems.append(Problem(_join(path, key), f"expected a string, got {shown(item)}",
                                    f"quote the value, e.g. {key}: \"{item}\""))
    return value


def _build(cls: Any, raw: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, dict):
        problems.append(Problem(path or "<spec>", f"expected a mapping, got {shown(raw)}",
                                "write `key: value` lines"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = did_you_mean(str(key), fields) or f"valid keys here: {', '.join(fields)}"
            problems.append(Problem(_join(path, str(key)), "unknown key", hint))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], sub, dict(f.metadata), problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(Problem(sub, "is required", f"add `{name}:` ({f.metadata.get('doc', '')})"))
            kwargs[name] = None
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------- overrides and loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError.single(str(p), "no such file", "give the path to a job spec, e.g. jobs/digits.yaml")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError.single(str(p), f"not valid YAML: {exc}", "check indentation and quoting") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError.single(str(p), f"cannot read it: {exc}", "give a readable UTF-8 text file") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a YAML {type(raw).__name__}"
        raise UserError.single(str(p), f"a job spec must be a YAML mapping, got {got}",
                               "start with `name: my-job`, then `model:` (see jobs/digits.yaml)")
    return raw


def parse_spec(raw: dict[str, Any], source: str = "", check_classes: bool = True) -> Spec:
    """Check a raw dict fully; raise UserError with every problem (each path once), else return the Spec."""
    tree_problems, fatal = check_tree(raw)
    if fatal:
        raise UserError(tree_problems, source)
    problems: list[Problem] = []
    spec = _build(Spec, raw, "", problems)
    if spec is not None:
        problems += semantic_checks(spec)
        if check_classes:
            from trainctl.components import check_components

            problems += check_devices(spec)

            named = {p.path for p in problems}
            problems += [p for p in check_components(spec) if p.path not in named]
    problems += tree_problems
    if problems:
        unique = {p.path: p for p in reversed(problems)}  # first problem per path wins, order kept
        raise UserError([p for p in problems if unique[p.path] is p], source)
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_classes: bool = True) -> Spec:
    raw = read_yaml(path)
    problems: list[Problem] = []
    for assignment in overrides:
        try:
            apply_override(raw, assignment)
        except UserError as err:
            problems += err.problems
    try:
        spec = parse_spec(raw, str(path), check_classes)
    except UserError as err:
        problems += err.problems
    if problems:
        raise UserError(problems, str(path))
    return spec


# ---------------------------------------------------------------- env references and secrets


def env_refs(value: Any) -> list[str]:
    """Names of environment variables referenced as ${env:NAME} anywhere in value."""
    if isinstance(value, str):
        return ENV_REF.findall(value)
    if isinstance(value, dict):
        return [n for v in value.values() for n in env_refs(v)]
    if isinstance(value, list):
        return [n for v in value for n in env_refs(v)]
    return []


def resolve_env(value: Any) -> Any:
    """Replace ${env:NAME} with the environment's value: done on the worker, never in what is logged.

    Takes plain values or spec dataclasses (a Component, the whole Spec); enums are left as they are.
    """
    if isinstance(value, Enum):
        return value
    if isinstance(value, str):
        return ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, dict):
        return {k: resolve_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: resolve_env(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """Rebuild a Spec from its resolved dict (already validated at submit time)."""
    return parse_spec(data, check_classes=False)
