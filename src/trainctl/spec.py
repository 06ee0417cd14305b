"""The job spec: one YAML file is the whole job.

Every default lives in the dataclasses below (and nowhere else); `load_spec` reads YAML, applies `--set`
overrides, checks every field and reports all problems at once, each naming its YAML path, what is valid
and a HINT. Class paths are imported and their init_args type-checked by `trainctl.components`.
"""

from __future__ import annotations

import dataclasses
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

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


class Accelerator(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Mode(str, Enum):
    min = "min"
    max = "max"


class OnFailure(str, Enum):
    requeue = "requeue"  # crashes are retried from the last good checkpoint while max_restarts lasts
    fail = "fail"  # crashes end the run FAILED; preemption and time limits still requeue


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
    save_last: bool = _f(True, doc="keep last.ckpt (the resume point) and mirror it to MLflow")
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
    max_restarts: int = _f(3, lo=0, hi=1000, doc="requeues/retries after preemption, time limit or crash")
    on_failure: OnFailure = _f(OnFailure.requeue, doc="requeue | fail: what a crash does")
    collective_timeout_s: float = _f(300.0, lo=5, hi=86400, doc="a stuck or dead rank fails the job after this")
    signal_lead_s: int = _f(60, lo=5, hi=3600, doc="warning signal this long before the time limit")


@dataclass
class Tracking:
    uri: str | None = _f(None, doc="MLflow URI; default MLFLOW_TRACKING_URI, else sqlite in workdir")
    log_every_n_steps: int = _f(1, lo=1, hi=10**6, doc="step metrics logged every N steps")
    log_grad_norm: bool = _f(True, doc="log the global L2 norm of the gradients (grad/norm)")
    log_checkpoints: bool = _f(True, doc="mirror best/last checkpoints to the MLflow run")
    redact: list[str] = _f(factory=list, doc="spec paths whose values are secret (never sent to MLflow)")


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
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, meta: dict[str, Any], problems: list[Problem]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, meta, problems)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if isinstance(tp, type) and issubclass(tp, Enum):
        choices = [m.value for m in tp]
        if value in choices:
            return tp(value)
        hint = did_you_mean(str(value), choices) or f"use one of: {', '.join(choices)}"
        problems.append(Problem(path, f"{value!r} is not valid; valid: {', '.join(choices)}", hint))
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected a list, got {type(value).__name__}", "write a YAML list"))
            return None
        return [_convert(item_tp, v, f"{path}[{i}]", {}, problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected a mapping, got {type(value).__name__}", "key: value"))
            return None
        return value
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        problems.append(Problem(path, f"expected {_type_name(tp)}, got {value!r}", f"write {_type_name(tp)}"))
        return None
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        problems.append(Problem(path, f"{value!r} is out of range [{lo}, {hi}]", "pick a value in the range"))
        return None
    return float(value) if tp is float else value


def _build(cls: Any, raw: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, dict):
        problems.append(Problem(path or "<spec>", f"expected a mapping, got {type(raw).__name__}",
                                "write `key: value` lines"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = did_you_mean(str(key), fields) or f"valid keys: {', '.join(fields)}"
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


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the raw spec dict."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError.single("--set", f"{assignment!r} is not key.path=value", "e.g. --set trainer.max_epochs=3")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError.single(f"--set {key}", f"value is not valid YAML: {exc}", "quote strings") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError.single(f"--set {key}", f"'{'.'.join(parts[: i + 1])}' is not a mapping",
                                   "override a leaf inside a mapping")
        if node.get(part) is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError.single(f"--set {key}", "the parent is not a mapping", "override a leaf inside a mapping")


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError.single(str(p), "no such file", "give the path to a job spec, e.g. jobs/digits.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError.single(str(p), f"not valid YAML: {exc}", "check indentation and quoting") from None
    if not isinstance(raw, dict):
        raise UserError.single(str(p), "a job spec must be a YAML mapping", "start with `name: my-job`")
    return raw


def parse_spec(raw: dict[str, Any], source: str = "", check_classes: bool = True) -> Spec:
    """Check a raw dict fully; raise UserError with every problem, else return the Spec."""
    problems: list[Problem] = []
    spec = _build(Spec, raw, "", problems)
    if not problems:
        problems += _semantic_checks(spec)
    if not problems and check_classes:
        from trainctl.components import check_components

        problems += check_components(spec)
    if problems:
        raise UserError(problems, source)
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_classes: bool = True) -> Spec:
    raw = read_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_spec(raw, str(path), check_classes)


def _semantic_checks(spec: Spec) -> list[Problem]:
    out: list[Problem] = []
    if not SAFE_NAME.match(spec.name):
        out.append(Problem("name", f"{spec.name!r} is not a safe name",
                           "use letters, digits, '.', '_' or '-' (≤ 64 characters, no spaces or slashes)"))
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,127}$", spec.experiment) or ".." in spec.experiment:
        out.append(Problem("experiment", f"{spec.experiment!r} is not a valid experiment name",
                           "use letters, digits, spaces, '.', '_', '-', '/' (≤ 128)"))
    out += _check_path("workdir", spec.workdir)
    kind = spec.backend.kind
    if spec.resources.nodes > 1 and kind is BackendKind.local:
        out.append(Problem("resources.nodes", f"{spec.resources.nodes} nodes need a cluster backend",
                           "set backend.kind: slurm or ray, or resources.nodes: 1"))
    uri = spec.tracking.uri
    if uri is not None and not re.match(r"^(https?|sqlite|file|databricks)(:|$)|^/", uri):
        out.append(Problem("tracking.uri", f"{uri!r} is not an MLflow tracking URI",
                           "use http://host:5000, sqlite:///path/mlflow.db or file:///path"))
    if kind is not BackendKind.local and uri is not None and not uri.startswith(("http://", "https://")):
        out.append(Problem("tracking.uri", f"backend {kind.value} needs a tracking server reachable from the nodes",
                           "run `make mlflow` on the login node and set tracking.uri: http://<host>:5000"))
    if spec.early_stopping is not None and not spec.early_stopping.monitor:
        out.append(Problem("early_stopping.monitor", "must name a metric", "e.g. val/loss"))
    out += _check_sbatch(spec.backend.slurm)
    for i, line in enumerate(spec.backend.slurm.setup):
        if "\n" in line or "\0" in line:
            out.append(Problem(f"backend.slurm.setup[{i}]", "must be one line", "use one list item per line"))
    return out


def _check_path(where: str, value: str) -> list[Problem]:
    if not value or "\0" in value or "\n" in value or ".." in Path(value).parts:
        return [Problem(where, f"{value!r} is not an acceptable path",
                        "use a plain absolute or relative directory without '..'")]
    return []


# sbatch options trainctl renders itself: the spec owns them through `resources` and `fault_tolerance`.
OWNED_SBATCH = {
    "nodes": "resources.nodes", "ntasks-per-node": "resources.devices_per_node", "ntasks": "resources",
    "time": "resources.time_min", "cpus-per-task": "resources.cpus_per_task", "mem": "resources.mem_gb",
    "gpus-per-node": "backend.slurm.gpus_per_node", "signal": "fault_tolerance.signal_lead_s",
    "requeue": "fault_tolerance.max_restarts", "output": "(managed)", "error": "(managed)",
    "job-name": "name", "open-mode": "(managed)", "partition": "backend.slurm.partition",
    "account": "backend.slurm.account", "qos": "backend.slurm.qos", "constraint": "backend.slurm.constraint",
    "wckey": "(managed)", "array": "(not supported)", "wrap": "(not supported)",
}
SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]{1,31}$")


def _check_sbatch(opts: SlurmOptions) -> list[Problem]:
    out: list[Problem] = []
    for key, value in opts.sbatch.items():
        path = f"backend.slurm.sbatch.{key}"
        if not isinstance(key, str) or not SBATCH_KEY.match(key):
            out.append(Problem(path, "not an sbatch long option name", "e.g. exclusive, reservation, mail-type"))
        elif key in OWNED_SBATCH:
            out.append(Problem(path, "is set by trainctl", f"set it through {OWNED_SBATCH[key]}"))
        elif not isinstance(value, (str, int, bool)) or (isinstance(value, str) and re.search(r"[\n\r\0]", value)):
            out.append(Problem(path, f"{value!r} is not a single-line string, number or true",
                               "sbatch options take one value"))
    return out


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
    """Replace ${env:NAME} with the environment's value: done on the worker, never in what is logged."""
    if isinstance(value, str):
        return ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, dict):
        return {k: resolve_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v) for v in value]
    return value


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """Rebuild a Spec from its resolved dict (already validated at submit time)."""
    return parse_spec(data, check_classes=False)
