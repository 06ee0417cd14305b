"""Loading a job spec: YAML, `--set` overrides, typed conversion and every check, all problems at once.

The fields and their defaults are the dataclasses in `spec_types` (re-exported here); each problem names its
YAML path, what is valid and a HINT. Class paths are checked by `trainctl.components`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any, Union

import yaml

from trainctl.errors import Problem, UserError, did_you_mean, shown
from trainctl.spec_checks import CONTROL, SAFE_NAME, check_devices, check_tree, semantic_checks
from trainctl.spec_types import (
    Accelerator,
    Backend,
    BackendKind,
    Checkpoint,
    Component,
    EarlyStopping,
    FaultTolerance,
    Fsdp,
    Mode,
    OnFailure,
    RayOptions,
    Resources,
    Sharding,
    SlurmOptions,
    Spec,
    Strategy,
    Tracking,
)

__all__ = ["SAFE_NAME", "Accelerator", "Backend", "BackendKind", "Checkpoint", "Component", "EarlyStopping",
           "FaultTolerance", "Fsdp", "Mode", "OnFailure", "RayOptions", "Resources", "Sharding", "SlurmOptions", "Spec",
           "Strategy", "Tracking",
           "apply_override", "load_spec", "parse_spec", "resolve_env", "spec_from_dict", "with_overrides"]

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------- typed loading


def type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " | ".join(m.value for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
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
            problems[-1] = Problem(path, f"expected {type_name(tp)}, got {shown(value)}",
                                   f"write {type_name(tp)}{doc}")
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
            problems.append(Problem(path, f"expected {type_name(tp)}, got {shown(value)}",
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
        problems.append(Problem(path, f"expected {type_name(tp)}, got {shown(value)}",
                                f"write {type_name(tp)}{doc}"))
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
        raise UserError.single(str(p), f"not valid YAML: {yaml_error(exc, p)}", "check indentation and quoting"
                               ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError.single(str(p), f"cannot read it: {exc}", "give a readable UTF-8 text file") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a YAML {type(raw).__name__}"
        raise UserError.single(str(p), f"a job spec must be a YAML mapping, got {got}",
                               "start with `name: my-job`, then `model:` (see jobs/digits.yaml)")
    return raw


def yaml_error(exc: yaml.YAMLError, path: str | Path) -> str:
    """PyYAML's message with the file's name where it says `"<unicode string>"` (it parsed a string)."""
    for mark in (getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)):
        if mark is not None:
            mark.name = str(path)
    return str(exc)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the raw spec dict; list items by index."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    example = "e.g. --set trainer.max_epochs=3 or --set callbacks.0.init_args.x=1"
    if not sep or not key:
        raise UserError.single("--set", f"{assignment!r} is not key.path=value", example)
    parts = key.split(".")
    if any(not p or CONTROL.search(p) for p in parts):
        raise UserError.single(f"--set {key}", "has an empty or invalid key in its path", example)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError.single(f"--set {key}", f"value is not valid YAML: {exc}",
                               "quote strings, e.g. --set 'name=\"my job\"'") from None
    node: Any = raw
    for i, part in enumerate(parts):
        here, last = ".".join(parts[: i + 1]), i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError.single(f"--set {key}", f"'{here}': index {part} is not in the list "
                                       f"({len(node)} items)", f"use an index from 0 to {len(node) - 1}"
                                       if node else "add the list item in the spec file first")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = [] if parts[i + 1].isdigit() else {}
                node = node[part]
        else:
            parent = ".".join(parts[:i]) or "the spec"
            raise UserError.single(f"--set {key}", f"'{parent}' is {shown(node)}, not a mapping or list",
                                   f"override a leaf inside a mapping, or set '{parent}' itself")


def with_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], list[Problem]]:
    """A copy of raw with every `--set` applied (raw itself is left as read), and the problems of those that failed."""
    out = copy.deepcopy(raw)
    problems: list[Problem] = []
    for assignment in overrides:
        try:
            apply_override(out, assignment)
        except UserError as err:
            problems += err.problems
    return out, problems


def parse_spec(raw: dict[str, Any], source: str = "", check_classes: bool = True, from_source: bool = False
               ) -> Spec:
    """Check a raw dict fully; raise UserError with every problem (each path once), else return the Spec.

    from_source: learn the classes' signatures from their source where that settles it (`validate`: no import of
    the user's module, so an error raised while importing it is found by `submit`, which imports).
    """
    tree_problems, fatal = check_tree(raw)
    if fatal:
        raise UserError(tree_problems, source)
    problems: list[Problem] = []
    spec = _build(Spec, raw, "", problems)
    if spec is not None:
        problems += semantic_checks(spec)
        if check_classes:
            from trainctl.class_checks import check_components

            problems += check_devices(spec)
            named = {p.path for p in problems}
            problems += [p for p in check_components(spec, from_source) if p.path not in named]
    problems += tree_problems
    if problems:
        unique = {p.path: p for p in reversed(problems)}  # first problem per path wins, order kept
        raise UserError([p for p in problems if unique[p.path] is p], source)
    return spec


def load_spec(path: str | Path, overrides: Iterable[str] = (), check_classes: bool = True,
              from_source: bool = False) -> Spec:
    raw, problems = with_overrides(read_yaml(path), overrides)
    try:
        spec = parse_spec(raw, str(path), check_classes, from_source)
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
