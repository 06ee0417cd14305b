"""The spec's classes checked in one pass: each init_arg against its class's signature, every problem at once.

Walking the init_args here (not one jsonargparse parse of the whole object) is what lets every problem carry
its own YAML path and HINT: jsonargparse stops at the first mismatch and words it in its own English.
jsonargparse still judges each value against its annotation (`Signature.value_problem`).

A class is known either from its source (`static_sig`, no import: `validate` answers in well under a second)
or by importing it. The first is tried first; whatever it cannot settle (a nested class_path, a type from a
library, an import that fails) reruns the whole check on imported classes, so the problems are the same
either way. Each rank imports and builds the classes again (`components.instantiate`) before training.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from trainctl import signature as sigs
from trainctl.components import (
    OWNED_TRAINER_ARGS,
    import_problem,
    namespace_named,
    namespace_of,
)
from trainctl.errors import Problem, did_you_mean, shown
from trainctl.signature import Signature, Unresolved, type_text

if TYPE_CHECKING:
    from trainctl.spec_types import Component, Spec

LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning")


@dataclass(frozen=True)
class ClassInfo:
    """What validation needs of one class: its signature and which Lightning base classes it has."""

    path: str
    signature: Signature
    namespace: str | None  # the first Lightning package in its MRO
    cls: type | None = None  # the imported class; None when read from source
    lightning: frozenset[tuple[str, str]] = frozenset()  # (namespace, kind), read from source
    own_names: frozenset[str] = frozenset()  # bound ahead of Lightning's classes in the MRO, read from source

    def is_a(self, namespace: str, kind: str) -> bool:
        if self.cls is not None:
            return issubclass(self.cls, getattr(namespace_named(namespace).pl, kind))
        return (namespace, kind) in self.lightning

    def overrides(self, hook: str) -> bool:
        """Whether the class's own code, not Lightning's default, provides `hook`: the Trainer's own test
        (`is_overridden`) for the dataloader hooks, judged before the job runs."""
        if self.cls is None:
            return hook in self.own_names
        owner = next((c for c in self.cls.__mro__ if hook in vars(c)), None)
        return owner is not None and owner.__module__.split(".")[0] not in LIGHTNING_PACKAGES


class Classes(Protocol):
    def find(self, where: str, path: str) -> tuple[ClassInfo | None, Problem | None]: ...
    def trainer(self, namespace: str) -> Signature: ...
    def default_namespace(self) -> str: ...
    def nested(self, where: str, tp: Any, value: dict[str, Any], depth: int) -> list[Problem]: ...


class Imported:
    """Classes known by importing them."""

    def find(self, where: str, path: str) -> tuple[ClassInfo | None, Problem | None]:
        cls, prob = import_problem(where, path)
        if cls is None:
            return None, prob
        ns = namespace_of(cls)
        return ClassInfo(path, sigs.of_class(cls), ns.name if ns else None, cls), None

    def trainer(self, namespace: str) -> Signature:
        return sigs.of_class(namespace_named(namespace).pl.Trainer)

    def default_namespace(self) -> str:
        try:
            return namespace_named("pytorch_lightning").name
        except ImportError:
            return namespace_named("lightning.pytorch").name

    def nested(self, where: str, tp: Any, value: dict[str, Any], depth: int) -> list[Problem]:
        """A nested `{class_path, init_args}` object given for an argument annotated `tp`."""
        problems = [Problem(f"{where}.{k}", "unknown key in a nested class object", "use class_path and init_args")
                    for k in value if k not in ("class_path", "init_args", "dict_kwargs")]
        info, prob = self.find(where, value["class_path"])
        if prob or info is None or info.cls is None:
            return [*problems, prob] if prob else problems
        bases = sigs.bases_of(tp)
        if bases and not any(issubclass(info.cls, b) for b in bases):
            names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
            return [*problems, Problem(f"{where}.class_path", f"{value['class_path']} is not a {names}",
                                       f"give a subclass of {names}, which this argument expects")]
        return problems + check_args(self, where, info.signature, value.get("init_args") or {}, depth)


class FromSource:
    """Classes read from their source files; raises Unresolved for anything it cannot settle."""

    def find(self, where: str, path: str) -> tuple[ClassInfo | None, Problem | None]:
        from trainctl import static_sig

        if not isinstance(path, str) or not path.count("."):
            raise Unresolved(str(path))
        found = static_sig.read_class(path)
        return ClassInfo(path, found.signature, found.namespace, lightning=found.lightning,
                         own_names=found.own_names), None

    def trainer(self, namespace: str) -> Signature:
        from trainctl import static_sig

        return static_sig.read_init(f"{namespace}.trainer.trainer.Trainer")

    def default_namespace(self) -> str:
        from trainctl import static_sig

        for name in static_sig.NAMESPACES:
            if static_sig.find_file(name) is not None:
                return name
        raise Unresolved("no Lightning package found")

    def nested(self, where: str, tp: Any, value: dict[str, Any], depth: int) -> list[Problem]:
        raise Unresolved(f"{where}: a nested class object")


def check_components(spec: Spec, from_source: bool = True) -> list[Problem]:
    """Every class path resolved and its init_args checked; the trainer arguments too.

    Fields that failed their type check are None and skipped (they are already reported). A model that does not
    import hides nothing else: data and callbacks are then judged against their own Lightning package, and the
    trainer arguments against the first package found (they are the same in both).
    """
    if from_source:
        try:
            return check_with(FromSource(), spec)
        except Exception:  # Unresolved, or source the reader cannot follow: the import settles it
            pass
    return check_with(Imported(), spec)


def check_with(classes: Classes, spec: Spec) -> list[Problem]:
    problems: list[Problem] = []
    ns = None
    model = data = None
    if spec.model is not None and isinstance(spec.model.class_path, str):
        model, prob = classes.find("model", spec.model.class_path)
        problems += [prob] if prob else []
        if model is not None and (model.namespace is None or not model.is_a(model.namespace, "LightningModule")):
            problems.append(Problem("model.class_path", f"{spec.model.class_path} is not a LightningModule",
                                    "subclass pytorch_lightning.LightningModule or lightning.pytorch.LightningModule"))
        elif model is not None:
            ns = model.namespace
            if spec.model.init_args is not None:
                problems += check_args(classes, "model", model.signature, spec.model.init_args)
    others = [("data", spec.data, "LightningDataModule")]
    others += [(f"callbacks[{i}]", cb, "Callback") for i, cb in enumerate(spec.callbacks or [])]
    seen_ns = ns
    for where, comp, kind in others:
        if comp is None or not isinstance(comp.class_path, str):
            continue
        info, prob = classes.find(where, comp.class_path)
        if prob or info is None:
            problems += [prob] if prob else []
            continue
        own = ns or info.namespace or classes.default_namespace()
        seen_ns = seen_ns or info.namespace
        prob = _same_namespace(where, info, own, kind, comp, ns is not None)
        if prob:
            problems.append(prob)
            continue
        data = info if where == "data" else data
        if comp.init_args is not None:
            problems += check_args(classes, where, info.signature, comp.init_args)
    if ns is not None and model is not None and not model.overrides("train_dataloader"):
        problems += _no_training_data(spec, data)
    if spec.trainer is not None:
        problems += check_trainer_args(classes, seen_ns or classes.default_namespace(), spec.trainer)
    return problems


def check_args(classes: Classes, where: str, sig: Signature, init_args: Any, depth: int = 0) -> list[Problem]:
    """Every init_arg at `where.init_args.<name>`: unknown, wrong type, missing; nested class_paths too."""
    owner = f"the signature of {sig.owner}"
    if not isinstance(init_args, dict):
        return [Problem(f"{where}.init_args", f"expected a mapping, got {shown(init_args)}",
                        "write `init_args:` as `name: value` lines")]
    problems: list[Problem] = []
    for key, value in init_args.items():
        path = f"{where}.init_args.{key}"
        if key not in sig.params:
            if not sig.var_kw:
                hint = did_you_mean(str(key), sig.params) or (
                    f"valid arguments of {sig.name}: {', '.join(sig.params) or '(none)'}")
                problems.append(Problem(path, f"{sig.name} has no argument {key!r}", hint))
            continue
        tp = sig.annotation(key)
        nested = tp in (inspect.Parameter.empty, Any) or bool(sigs.bases_of(tp))
        if nested and isinstance(value, dict) and "class_path" in value and depth < 8:
            problems += classes.nested(path, tp, value, depth + 1)
        else:
            prob = sig.value_problem(path, key, value, owner)
            problems += [prob] if prob else []
    for name, p in sig.params.items():
        if p.default is sigs.EMPTY and name not in init_args and not p.positional_only:
            problems.append(Problem(f"{where}.init_args.{name}", f"is required by {sig.name}",
                                    f"add `{name}:` ({type_text(sig.annotation(name))}) under {where}.init_args"))
    return problems


def _no_training_data(spec: Spec, data: ClassInfo | None) -> list[Problem]:
    """The model defines no train_dataloader: the data module must, or fit fails at its start. Lightning takes
    each loader from the data module when it defines one, else from the model."""
    model = spec.model.class_path
    if spec.data is None:
        return [Problem("data", f"is missing, and {model} defines no train_dataloader: the Trainer would have no "
                        "training data", "add `data:` with the class_path of a LightningDataModule (e.g. "
                        f"trainctl.examples.digits.DigitsDataModule), or define train_dataloader() in {model}")]
    if data is not None and not data.overrides("train_dataloader"):
        return [Problem("data.class_path", f"{data.path} defines no train_dataloader, nor does {model}: the "
                        "Trainer would have no training data", f"define train_dataloader() in {data.path} "
                        "(or in the model)")]
    return []


def _same_namespace(where: str, info: ClassInfo, ns: str, kind: str, comp: Component, model_known: bool
                    ) -> Problem | None:
    """None when the class subclasses ns's <kind>; else why not (wrong Lightning package, or not one at all)."""
    if info.is_a(ns, kind):
        return None
    path, other = comp.class_path, info.namespace
    if not model_known:
        return Problem(f"{where}.class_path", f"{path} is not a {kind}",
                       f"give a subclass of pytorch_lightning.{kind} or lightning.pytorch.{kind}")
    if other is not None and other != ns and info.is_a(other, kind):
        return Problem(f"{where}.class_path", f"{path} subclasses {other}.{kind}, but the model is a "
                       f"{ns}.LightningModule; one Trainer cannot mix the two Lightning packages",
                       f"import {kind} from {ns} in that module (as the model does), or switch the model "
                       f"to {other}")
    return Problem(f"{where}.class_path", f"{path} is not a {ns}.{kind}",
                   f"give a subclass of {ns}.{kind} (the same Lightning package as the model)")


def check_trainer_args(classes: Classes, namespace: str, args: dict[str, Any]) -> list[Problem]:
    sig = classes.trainer(namespace)
    allowed = [p for p in sig.params if p not in OWNED_TRAINER_ARGS]
    owner = f"the arguments of {namespace}.Trainer"
    problems: list[Problem] = []
    for key, value in args.items():
        path = f"trainer.{key}"
        if key in OWNED_TRAINER_ARGS:
            problems.append(Problem(path, "is set by trainctl", f"set it in {OWNED_TRAINER_ARGS[key]}"))
        elif key not in sig.params:
            hint = did_you_mean(str(key), allowed) or f"see {owner}"
            problems.append(Problem(path, "is not a Trainer argument", hint))
        else:
            prob = sig.value_problem(path, key, value, owner)
            problems += [prob] if prob else []
    return problems
