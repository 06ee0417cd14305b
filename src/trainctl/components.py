"""User classes from the spec: import, type-check (jsonargparse, as LightningCLI does) and instantiate.

Also picks the Lightning namespace (`pytorch_lightning` or `lightning.pytorch`) from the user's module:
a Trainer only accepts modules, callbacks and loggers of its own namespace.
"""

from __future__ import annotations

import importlib
import inspect
import io
import re
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
    if not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$", path):
        raise ValueError(f"{path!r} is not a dotted path like package.module.Class")
    module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if not inspect.isclass(obj):
        raise TypeError(f"{path} is a {type(obj).__name__}, not a class")
    return obj


def _import_problem(where: str, path: str) -> tuple[type | None, Problem | None]:
    try:
        return import_class(path), None
    except ModuleNotFoundError as exc:
        hint = "install the package, or run from the directory that holds your module (it must be importable)"
        return None, Problem(f"{where}.class_path", f"cannot import {path!r}: {exc}", hint)
    except AttributeError:
        module_name, _, attr = path.rpartition(".")
        names = dir(importlib.import_module(module_name))
        hint = did_you_mean(attr, names) or f"check the class name in {module_name}"
        return None, Problem(f"{where}.class_path", f"{module_name} has no class {attr!r}", hint)
    except Exception as exc:  # a user module that fails to import is still the user's input
        return None, Problem(f"{where}.class_path", f"cannot import {path!r}: {type(exc).__name__}: {exc}",
                             "fix the error in that module or the dotted path")


def _parser() -> Any:
    from jsonargparse import ArgumentParser

    return ArgumentParser(exit_on_error=False)


def _check_init_args(where: str, cls: type, base: type, comp: Component) -> list[Problem]:
    """Type-check init_args against the signature, nested class_path objects included."""
    parser = _parser()
    parser.add_subclass_arguments(base, "obj", required=True)
    buf = io.StringIO()
    try:
        with redirect_stderr(buf):
            parser.parse_object({"obj": {"class_path": comp.class_path, "init_args": comp.init_args}})
    except Exception as exc:  # jsonargparse reports every kind of mismatch as an exception
        return [_jsonargparse_problem(where, cls, str(exc), comp.init_args)]
    return []


def _jsonargparse_problem(where: str, cls: type, text: str, init_args: dict[str, Any]) -> Problem:
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    unknown = [k for k in init_args if k not in params]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        key = unknown[0]
        hint = did_you_mean(key, params) or f"valid arguments of {cls.__name__}: {', '.join(params)}"
        return Problem(f"{where}.init_args.{key}", f"{cls.__name__} has no argument {key!r}", hint)
    keys = re.findall(r'Parser key "([^"]+)"', text)[1:]
    if keys:
        return Problem(f"{where}.init_args.{'.'.join(keys)}", f"does not fit {cls.__name__}'s signature: "
                       f"{_expected(text)}", f"see the signature of {cls.__module__}.{cls.__name__}")
    missing = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is p.empty and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in init_args
    ]
    if missing:
        return Problem(f"{where}.init_args.{missing[0]}", "is required by the class", f"add init_args.{missing[0]}")
    return Problem(f"{where}.init_args", f"does not fit {cls.__name__}'s signature: {text.strip()}",
                   f"see the signature of {cls.__module__}.{cls.__name__}")


def _expected(text: str) -> str:
    """The 'Expected a <int>. Got value: x' part of a jsonargparse error, made short."""
    found = re.findall(r"(Expected a <class '(\w+)'>|Unrecognized arguments: .*|Key \"[^\"]+\" is required.*)", text)
    types_ = [t for _, t in found if t]
    if types_:
        got = re.findall(r"Got value: (.*)", text) or re.findall(r"Given value: (.*)", text)
        value = got[0] if got else ""
        return f"expected {' or '.join(dict.fromkeys(types_))}" + (f", got {value}" if value else "")
    return found[0][0] if found else text.strip().splitlines()[-1]


def check_components(spec: Spec) -> list[Problem]:
    """Import every class path and type-check its init_args; check trainer arguments."""
    problems: list[Problem] = []
    model_cls, prob = _import_problem("model", spec.model.class_path)
    if prob:
        return [prob]
    ns = namespace_of(model_cls)
    if ns is None:
        return [Problem("model.class_path", f"{spec.model.class_path} is not a LightningModule",
                        "subclass pytorch_lightning.LightningModule or lightning.pytorch.LightningModule")]
    problems += _check_init_args("model", model_cls, ns.pl.LightningModule, spec.model)
    if spec.data is not None:
        data_cls, prob = _import_problem("data", spec.data.class_path)
        if prob:
            problems.append(prob)
        elif not issubclass(data_cls, ns.pl.LightningDataModule):
            problems.append(Problem("data.class_path", f"{spec.data.class_path} is not a {ns.name}.LightningDataModule",
                                    "the data module must subclass the same Lightning package as the model"))
        else:
            problems += _check_init_args("data", data_cls, ns.pl.LightningDataModule, spec.data)
    for i, cb in enumerate(spec.callbacks):
        where = f"callbacks[{i}]"
        cb_cls, prob = _import_problem(where, cb.class_path)
        if prob:
            problems.append(prob)
        elif not issubclass(cb_cls, ns.pl.Callback):
            problems.append(Problem(f"{where}.class_path", f"{cb.class_path} is not a {ns.name}.Callback",
                                    "callbacks must subclass the same Lightning package as the model"))
        else:
            problems += _check_init_args(where, cb_cls, ns.pl.Callback, cb)
    problems += check_trainer_args(ns, spec.trainer)
    return problems


def check_trainer_args(ns: LightningNamespace, args: dict[str, Any]) -> list[Problem]:
    params = inspect.signature(ns.pl.Trainer.__init__).parameters
    allowed = [p for p in params if p != "self" and p not in OWNED_TRAINER_ARGS]
    problems: list[Problem] = []
    for key in args:
        if key in OWNED_TRAINER_ARGS:
            problems.append(Problem(f"trainer.{key}", "is set by trainctl", f"set it in {OWNED_TRAINER_ARGS[key]}"))
        elif key not in params:
            hint = did_you_mean(key, allowed) or "see the Lightning Trainer's arguments"
            problems.append(Problem(f"trainer.{key}", "is not a Trainer argument", hint))
    if problems:
        return problems
    parser = _parser()
    parser.add_class_arguments(ns.pl.Trainer, "trainer", skip=set(OWNED_TRAINER_ARGS), sub_configs=True)
    buf = io.StringIO()
    for key, value in args.items():
        try:
            with redirect_stderr(buf):
                parser.parse_object({"trainer": {key: value}}, defaults=False)
        except Exception as exc:
            problems.append(Problem(f"trainer.{key}", f"{value!r} does not fit: {_expected(str(exc))}",
                                    f"see the type of Trainer({key}=…)"))
    return problems


def instantiate(comp: Component, base: type) -> Any:
    """Build the object (nested class_path objects too) exactly as validation parsed it."""
    parser = _parser()
    parser.add_subclass_arguments(base, "obj", required=True)
    cfg = parser.parse_object({"obj": {"class_path": comp.class_path, "init_args": comp.init_args}})
    return parser.instantiate_classes(cfg).obj
