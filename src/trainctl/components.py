"""User classes from the spec: import, type-check (jsonargparse, as LightningCLI does) and instantiate.

Also picks the Lightning namespace (`pytorch_lightning` or `lightning.pytorch`) from the user's module:
a Trainer only accepts modules, callbacks and loggers of its own namespace.
"""

from __future__ import annotations

import importlib
import inspect
import io
import re
import types
import typing
from contextlib import redirect_stderr
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trainctl.errors import Problem, did_you_mean

if TYPE_CHECKING:
    from trainctl.spec import Component, Spec

# Trainer arguments trainctl owns, and the spec section that sets each.
OWNED_TRAINER_ARGS = {
    "strategy": "resources / backend (trainctl always runs DDP)",
    "devices": "resources.devices_per_node",
    "num_nodes": "resources.nodes",
    "accelerator": "resources.accelerator",
    "logger": "tracking",
    "callbacks": "callbacks (top-level section)",
    "enable_checkpointing": "checkpoint",
    "default_root_dir": "workdir",
    "plugins": "(managed by trainctl)",
    "use_distributed_sampler": "(managed by trainctl for exact resume)",
    "log_every_n_steps": "tracking.log_every_n_steps",
}


@dataclass(frozen=True)
class LightningNamespace:
    """One of the two Lightning packages: everything built for a Trainer must come from the same one."""

    pl: ModuleType  # pytorch_lightning or lightning.pytorch
    fabric: ModuleType  # lightning_fabric or lightning.fabric

    @property
    def name(self) -> str:
        return self.pl.__name__


def namespace_named(name: str) -> LightningNamespace:
    if name == "lightning.pytorch":
        return LightningNamespace(importlib.import_module("lightning.pytorch"),
                                  importlib.import_module("lightning.fabric"))
    return LightningNamespace(importlib.import_module("pytorch_lightning"),
                              importlib.import_module("lightning_fabric"))


def namespace_of(cls: type) -> LightningNamespace | None:
    """The namespace whose LightningModule/DataModule `cls` subclasses, judged by its MRO (no imports)."""
    for base in cls.__mro__:
        mod = base.__module__
        if mod.startswith("pytorch_lightning."):
            return namespace_named("pytorch_lightning")
        if mod.startswith("lightning.pytorch."):
            return namespace_named("lightning.pytorch")
    return None


def import_class(path: str) -> type:
    """Import `a.b.C`; raise ImportError/AttributeError with the underlying cause."""
    if not isinstance(path, str) or not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$", path):
        raise ValueError(f"{path!r} is not a dotted path like package.module.Class")
    module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if not inspect.isclass(obj):
        raise TypeError(f"{path} is a {type(obj).__name__}, not a class")
    return obj


def _import_problem(where: str, path: str) -> tuple[type | None, Problem | None]:
    at = f"{where}.class_path"
    try:
        return import_class(path), None
    except ValueError as exc:
        return None, Problem(at, str(exc), "write an importable dotted path like package.module.ClassName")
    except TypeError as exc:
        return None, Problem(at, str(exc), "give the class itself, e.g. package.module.ClassName")
    except ModuleNotFoundError as exc:
        hint = ("put the module next to the spec or in the directory you run trainctl from, add its directory to "
                "PYTHONPATH, or pip install its package")
        return None, Problem(at, f"cannot import {path!r}: {exc}", hint)
    except AttributeError:
        module_name, _, attr = path.rpartition(".")
        try:
            names = [n for n in dir(importlib.import_module(module_name)) if not n.startswith("_")]
        except Exception:
            names = []
        hint = did_you_mean(attr, names) or f"check the class name in {module_name}"
        return None, Problem(at, f"{module_name} has no class {attr!r}", hint)
    except Exception as exc:  # a user module that fails to import is still the user's input
        return None, Problem(at, f"cannot import {path!r}: {type(exc).__name__}: {exc}",
                             "fix the error in that module or the dotted path")


def _parser() -> Any:
    from jsonargparse import ArgumentParser

    return ArgumentParser(exit_on_error=False)


def _type_text(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        rest = [_type_text(a) for a in args if typing.get_origin(a) is not typing.Literal]
        if literals:
            rest.insert(0, "one of " + ", ".join(repr(v) for v in dict.fromkeys(literals)))
        return " or ".join(dict.fromkeys(rest))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allows_none(tp: Any, default: Any) -> bool:
    if default is None or tp in (inspect.Parameter.empty, Any, object, type(None)) or isinstance(tp, str):
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and any(_allows_none(a, 0)
                                                                           for a in typing.get_args(tp))


def _value_problem(path: str, tp: Any, value: Any, owner: str, default: Any = inspect.Parameter.empty
                   ) -> Problem | None:
    """Check one value against one annotation as jsonargparse (and so instantiate) will; null only if allowed."""
    if value is None and not _allows_none(tp, default):
        return Problem(path, f"must not be null: expected {_type_text(tp)}",
                       f"write {_type_text(tp)}, or remove the key to use the default; see {owner}")
    if tp is inspect.Parameter.empty or tp is Any or isinstance(tp, str):
        return None
    parser = _parser()
    try:
        parser.add_argument("--v", type=tp)
    except Exception:  # a type jsonargparse cannot handle is left to the full check
        return None
    try:
        with redirect_stderr(io.StringIO()):
            parser.parse_object({"v": value})
    except Exception as exc:
        detail = _expected(str(exc))
        return Problem(path, f"expected {_type_text(tp)}, got {_shown(value)}"
                       + (f" ({detail})" if detail and not detail.startswith("expected") else ""),
                       f"write {_type_text(tp)}; see {owner}")
    return None


def _signature(cls: type) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(named parameters, resolved annotations, takes **kwargs) of cls.__init__."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}, {}, True
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    params = {n: p for n, p in sig.parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    annotations = {n: hints.get(n, p.annotation) for n, p in params.items()}
    return params, annotations, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _bases(tp: Any) -> list[type]:
    """The classes a class_path value for this annotation must subclass (none: anything goes)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [b for a in typing.get_args(tp) for b in _bases(a)]
    return [tp] if inspect.isclass(tp) and tp.__module__ != "builtins" else []


def _check_signature(where: str, cls: type, init_args: Any, depth: int = 0) -> list[Problem]:
    """Every init_arg of cls at `where.init_args.<name>`: unknown, wrong type, missing; nested class_paths too."""
    owner = f"the signature of {cls.__module__}.{cls.__qualname__}"
    if not isinstance(init_args, dict):
        return [Problem(f"{where}.init_args", f"expected a mapping, got {_shown(init_args)}",
                        "write `init_args:` as `name: value` lines")]
    params, annotations, var_kw = _signature(cls)
    problems: list[Problem] = []
    for key, value in init_args.items():
        path = f"{where}.init_args.{key}"
        if key not in params:
            if not var_kw:
                hint = did_you_mean(str(key), params) or (
                    f"valid arguments of {cls.__name__}: {', '.join(params) or '(none)'}")
                problems.append(Problem(path, f"{cls.__name__} has no argument {key!r}", hint))
            continue
        tp = annotations[key]
        nested = tp in (inspect.Parameter.empty, Any) or bool(_bases(tp))
        if nested and isinstance(value, dict) and "class_path" in value and depth < 8:
            problems += _check_nested(path, tp, value, depth + 1)
        else:
            prob = _value_problem(path, tp, value, owner, params[key].default)
            problems += [prob] if prob else []
    for name, p in params.items():
        if p.default is p.empty and name not in init_args and p.kind is not p.POSITIONAL_ONLY:
            problems.append(Problem(f"{where}.init_args.{name}", f"is required by {cls.__name__}",
                                    f"add `{name}:` ({_type_text(annotations[name])}) under {where}.init_args"))
    return problems


def _check_nested(where: str, tp: Any, value: dict[str, Any], depth: int) -> list[Problem]:
    """A nested `{class_path, init_args}` object given for an argument annotated `tp`."""
    problems = [Problem(f"{where}.{k}", "unknown key in a nested class object", "use class_path and init_args")
                for k in value if k not in ("class_path", "init_args", "dict_kwargs")]
    nested_cls, prob = _import_problem(where, value["class_path"])
    if prob or nested_cls is None:
        return [*problems, prob] if prob else problems
    bases = _bases(tp)
    if bases and not any(issubclass(nested_cls, b) for b in bases):
        names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        return [*problems, Problem(f"{where}.class_path", f"{value['class_path']} is not a {names}",
                                   f"give a subclass of {names}, which this argument expects")]
    return problems + _check_signature(where, nested_cls, value.get("init_args") or {}, depth)


def _check_init_args(where: str, cls: type, base: type, comp: Component) -> list[Problem]:
    """Type-check init_args against the signature, nested class_path objects included; then the full parse."""
    problems = _check_signature(where, cls, comp.init_args)
    if problems:
        return problems
    parser = _parser()
    parser.add_subclass_arguments(base, "obj", required=True)
    try:
        with redirect_stderr(io.StringIO()):
            parser.parse_object({"obj": {"class_path": comp.class_path, "init_args": comp.init_args}})
    except Exception as exc:  # jsonargparse reports every kind of mismatch as an exception
        return [Problem(f"{where}.init_args", f"does not fit {cls.__name__}'s signature: {_expected(str(exc))}",
                        f"see the signature of {cls.__module__}.{cls.__qualname__}")]
    return []


def _expected(text: str) -> str:
    """The 'Expected a <int>. Got value: x' part of a jsonargparse error, made short."""
    found = re.findall(r"(Expected a <class '(\w+)'>|Unrecognized arguments: .*|Key \"[^\"]+\" is required.*)", text)
    types_ = [t for _, t in found if t]
    if types_:
        got = re.findall(r"Got value: (.*)", text) or re.findall(r"Given value: (.*)", text)
        value = got[0] if got else ""
        return f"expected {' or '.join(dict.fromkeys(types_))}" + (f", got {value}" if value else "")
    if found:
        return found[0][0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and "Parser key" not in ln]
    return lines[0] if lines else text.strip()


def _same_namespace(where: str, cls: type, ns: LightningNamespace, kind: str, path: str, model_known: bool = True
                    ) -> Problem | None:
    """None when cls subclasses ns.pl.<kind>; else why not (wrong Lightning package, or not one at all)."""
    if issubclass(cls, getattr(ns.pl, kind)):
        return None
    other = namespace_of(cls)
    if not model_known:
        return Problem(f"{where}.class_path", f"{path} is not a {kind}",
                       f"give a subclass of pytorch_lightning.{kind} or lightning.pytorch.{kind}")
    if other is not None and other.name != ns.name and issubclass(cls, getattr(other.pl, kind)):
        return Problem(f"{where}.class_path", f"{path} subclasses {other.name}.{kind}, but the model is a "
                       f"{ns.name}.LightningModule; one Trainer cannot mix the two Lightning packages",
                       f"import {kind} from {ns.name} in that module (as the model does), or switch the model "
                       f"to {other.name}")
    return Problem(f"{where}.class_path", f"{path} is not a {ns.name}.{kind}",
                   f"give a subclass of {ns.name}.{kind} (the same Lightning package as the model)")


def check_components(spec: Spec) -> list[Problem]:
    """Import every class path and type-check its init_args; check trainer arguments.

    Fields that failed their type check are None and skipped (they are already reported). A model that does not
    import hides nothing else: data and callbacks are then judged against their own Lightning package, and the
    trainer arguments against the first package found (they are the same in both).
    """
    problems: list[Problem] = []
    ns = None
    if spec.model is not None and isinstance(spec.model.class_path, str):
        model_cls, prob = _import_problem("model", spec.model.class_path)
        problems += [prob] if prob else []
        model_ns = namespace_of(model_cls) if model_cls is not None else None
        if model_cls is not None and (model_ns is None or not issubclass(model_cls, model_ns.pl.LightningModule)):
            problems.append(Problem("model.class_path", f"{spec.model.class_path} is not a LightningModule",
                                    "subclass pytorch_lightning.LightningModule or lightning.pytorch.LightningModule"))
        elif model_cls is not None and model_ns is not None:
            ns = model_ns
            if spec.model.init_args is not None:
                problems += _check_init_args("model", model_cls, ns.pl.LightningModule, spec.model)
    others = [("data", spec.data, "LightningDataModule")]
    others += [(f"callbacks[{i}]", cb, "Callback") for i, cb in enumerate(spec.callbacks or [])]
    seen_ns = ns
    for where, comp, kind in others:
        if comp is None or not isinstance(comp.class_path, str):
            continue
        cls, prob = _import_problem(where, comp.class_path)
        if prob or cls is None:
            problems += [prob] if prob else []
            continue
        own = ns or namespace_of(cls) or default_namespace()
        seen_ns = seen_ns or namespace_of(cls)
        prob = _same_namespace(where, cls, own, kind, comp.class_path, ns is not None)
        if prob:
            problems.append(prob)
        elif comp.init_args is not None:
            problems += _check_init_args(where, cls, getattr(own.pl, kind), comp)
    if spec.trainer is not None:
        problems += check_trainer_args(seen_ns or default_namespace(), spec.trainer)
    return problems


def default_namespace() -> LightningNamespace:
    """The Lightning package installed here, for checks made without a model to pick one."""
    try:
        return namespace_named("pytorch_lightning")
    except ImportError:
        return namespace_named("lightning.pytorch")


def check_trainer_args(ns: LightningNamespace, args: dict[str, Any]) -> list[Problem]:
    params, annotations, _ = _signature(ns.pl.Trainer)
    allowed = [p for p in params if p not in OWNED_TRAINER_ARGS]
    owner = f"the arguments of {ns.name}.Trainer"
    problems: list[Problem] = []
    for key, value in args.items():
        path = f"trainer.{key}"
        if key in OWNED_TRAINER_ARGS:
            problems.append(Problem(path, "is set by trainctl", f"set it in {OWNED_TRAINER_ARGS[key]}"))
        elif key not in params:
            hint = did_you_mean(str(key), allowed) or f"see {owner}"
            problems.append(Problem(path, "is not a Trainer argument", hint))
        else:
            prob = _value_problem(path, annotations[key], value, owner, params[key].default)
            problems += [prob] if prob else []
    return problems


def instantiate(comp: Component, base: type) -> Any:
    """Build the object (nested class_path objects too) exactly as validation parsed it."""
    parser = _parser()
    parser.add_subclass_arguments(base, "obj", required=True)
    cfg = parser.parse_object({"obj": {"class_path": comp.class_path, "init_args": comp.init_args}})
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes  # the new name since 4.49
    return build(cfg).obj
