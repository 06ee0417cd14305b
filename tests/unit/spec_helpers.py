"""What the spec tests share: the example spec, one-field mutations, and problem checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from trainctl.errors import Problem, UserError
from trainctl.spec import parse_spec, read_yaml

from . import nested_models

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "jobs" / "digits.yaml"
NM = nested_models.__name__  # importable name of the tiny test module (depends on pytest's rootdir mode)


def digits_raw() -> dict[str, Any]:
    return read_yaml(DIGITS)


def problems_of(raw: dict[str, Any], check_classes: bool = True) -> list[Problem]:
    with pytest.raises(UserError) as info:
        parse_spec(raw, "job.yaml", check_classes=check_classes)
    err = info.value
    text = str(err)
    assert "Traceback" not in text
    for p in err.problems:
        assert p.path, f"a problem without a path: {p}"
        assert p.hint.strip(), f"a problem without a HINT: {p}"
        assert p.render() in text
    return err.problems


def only_problem(raw: dict[str, Any], check_classes: bool = True) -> Problem:
    found = problems_of(raw, check_classes)
    assert len(found) == 1, "\n".join(p.render() for p in found)
    return found[0]


def mutate(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of raw with `value` at dotted `path` (list items as numbers); value DELETE removes the key."""
    out = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


class _Delete:
    """A mutation's value that removes the key; its repr is stable, as test ids must be in every xdist worker."""

    def __repr__(self) -> str:
        return "<delete>"


DELETE = _Delete()


