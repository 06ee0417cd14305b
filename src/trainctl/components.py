"""User classes from the spec: import and instantiate them (jsonargparse, as LightningCLI does).

Checking their init_args before a job starts is `trainctl.class_checks`.

Also picks the Lightning namespace (`pytorch_lightning` or `lightning.pytorch`) from the user's module:
a Trainer only accepts modules, callbacks and loggers of its own namespace.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trainctl.errors import Problem, did_you_mean

if TYPE_CHECKING:
    from trainctl.spec_types import Component

CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")

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
    if not isinstance(path, str) or not CLASS_PATH.match(path):
        raise ValueError(f"{path!r} is not a dotted path like package.module.Class")
    module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if not inspect.isclass(obj):
        raise TypeError(f"{path} is a {type(obj).__name__}, not a class")
    return obj


def import_problem(where: str, path: str) -> tuple[type | None, Problem | None]:
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


def instantiate(comp: Component, base: type) -> Any:
    """Build the object (nested class_path objects too) with jsonargparse, as LightningCLI does."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "obj", required=True)
    cfg = parser.parse_object({"obj": {"class_path": comp.class_path, "init_args": comp.init_args}})
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes  # the new name since 4.49
    return build(cfg).obj
