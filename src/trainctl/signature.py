"""A class's `__init__` signature as validation needs it, and jsonargparse's verdict on one value.

A Signature comes from the imported class (`of_class`) or from its source without importing it
(`trainctl.static_sig`); both give the same parameters, so every check below reads the same either way.
jsonargparse decides whether a value fits an annotation (as LightningCLI and `instantiate` will); the
messages are written here from the annotation, not from jsonargparse's text.
"""

from __future__ import annotations

import inspect
import io
import types
import typing
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from typing import Any

from trainctl.errors import Problem, shown

EMPTY = inspect.Parameter.empty


class Unresolved(Exception):
    """The source alone cannot answer (a type or base outside what the static reader resolves): import instead."""


@dataclass(frozen=True)
class Param:
    annotation: Any = EMPTY  # a type jsonargparse can check; EMPTY (or a string) accepts anything
    default: Any = EMPTY  # EMPTY: required
    positional_only: bool = False


@dataclass
class Signature:
    """The named parameters of `owner`'s __init__ (self and *args left out) and whether it takes **kwargs."""

    owner: str  # module.Qualname, shown in hints
    name: str  # the class's own name
    params: dict[str, Param]
    var_kw: bool
    _parsers: dict[str, Any] = field(default_factory=dict, repr=False)

    def annotation(self, name: str) -> Any:
        ann = self.params[name].annotation
        if ann is Unresolved:
            raise Unresolved(f"{self.owner}({name}=...)")
        return ann

    def value_problem(self, path: str, name: str, value: Any, owner_text: str) -> Problem | None:
        """Does `value` fit parameter `name`? Null only where the annotation or a None default allows it."""
        tp, default = self.annotation(name), self.params[name].default
        if value is None and not allows_none(tp, default):
            return Problem(path, f"must not be null: expected {type_text(tp)}",
                           f"write {type_text(tp)}, or remove the key to use the default; see {owner_text}")
        if tp is EMPTY or tp is Any or isinstance(tp, str):
            return None
        parser = self._parser(name, tp)
        if parser is None:  # a type jsonargparse cannot check is checked when the rank builds the object
            return None
        try:
            with redirect_stderr(io.StringIO()):
                parser.parse_object({"v": value})
        except Exception:  # jsonargparse reports every mismatch as an exception; the annotation says what fits
            return Problem(path, f"expected {type_text(tp)}, got {shown(value)}", f"write {type_text(tp)}; see "
                           f"{owner_text}")
        return None

    def _parser(self, name: str, tp: Any) -> Any:
        if name not in self._parsers:
            from jsonargparse import ArgumentParser

            parser = ArgumentParser(exit_on_error=False)
            try:
                parser.add_argument("--v", type=tp)
            except Exception:
                parser = None
            self._parsers[name] = parser
        return self._parsers[name]


def of_class(cls: type) -> Signature:
    """The signature of an imported class, annotations resolved as jsonargparse resolves them."""
    owner = f"{cls.__module__}.{cls.__qualname__}"
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return Signature(owner, cls.__name__, {}, True)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    params = {n: Param(hints.get(n, p.annotation), p.default, p.kind is p.POSITIONAL_ONLY)
              for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return Signature(owner, cls.__name__, params, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()))


def type_text(tp: Any) -> str:
    """An annotation as a user reads it: int, int or null, one of 'a', 'b'."""
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        rest = [type_text(a) for a in args if typing.get_origin(a) is not typing.Literal]
        if literals:
            rest.insert(0, "one of " + ", ".join(repr(v) for v in dict.fromkeys(literals)))
        return " or ".join(dict.fromkeys(rest))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def allows_none(tp: Any, default: Any) -> bool:
    if default is None or tp in (EMPTY, Any, object, type(None)) or isinstance(tp, str):
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and any(allows_none(a, 0)
                                                                           for a in typing.get_args(tp))


def bases_of(tp: Any) -> list[type]:
    """The classes a class_path value for this annotation must subclass (none: anything goes)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [b for a in typing.get_args(tp) for b in bases_of(a)]
    return [tp] if inspect.isclass(tp) and tp.__module__ != "builtins" else []
