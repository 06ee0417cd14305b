"""A class's `__init__` signature and Lightning bases, read from its source without importing anything.

`validate` would otherwise spend seconds importing the user's module only to learn a signature: that module
imports Lightning, which imports torch, torch._dynamo and torchmetrics' scipy. Here the module's file is found
with importlib's path finder (no package `__init__` runs), parsed with `ast`, and its names are followed through
`import`/`from … import` and plain assignments into other files. Annotations resolve to real objects only when
they are builtins, `typing` forms or literals, so jsonargparse checks the values exactly as after an import.
Anything else (a decorator, a metaclass, a base or a type from elsewhere, a star import, a name bound under
`if`/`try`) raises Unresolved and the caller imports the class instead.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import functools
import importlib.util
import sys
import typing
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from trainctl.signature import EMPTY, Param, Signature, Unresolved

# Where each Lightning base class is defined, per package; the static walk stops at these.
LIGHTNING_KINDS = {"LightningModule": "core.module", "LightningDataModule": "core.datamodule",
                   "Callback": "callbacks.callback"}
NAMESPACES = ("pytorch_lightning", "lightning.pytorch")
TERMINALS = {f"{ns}.{mod}.{kind}": (ns, kind) for ns in NAMESPACES for kind, mod in LIGHTNING_KINDS.items()}
# Packages whose other classes are not followed: their MROs reach past what the walk sees.
OPAQUE = {"torch", "pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", *sys.stdlib_module_names}
FREE_MODULES = {"typing": typing, "collections.abc": collections.abc, "builtins": builtins}
BUILTIN_TYPES = {n: getattr(builtins, n) for n in ("int", "float", "str", "bool", "bytes", "complex", "list",
                                                   "dict", "tuple", "set", "frozenset", "object")}
AMBIGUOUS = object()  # a name bound under if/try, or a module with a star import or __getattr__


@dataclass
class Module:
    name: str
    bindings: dict[str, Any]  # top-level name -> ClassDef | FunctionDef | ("import", module) | ("from", mod, name)
    open_ended: bool  # a star import or a module __getattr__: an unbound name may still exist


@dataclass(frozen=True)
class StaticClass:
    path: str  # module.Name where it is defined
    signature: Signature
    lightning: frozenset[tuple[str, str]]  # (namespace, kind) of the Lightning bases in its MRO
    namespace: str | None  # the first Lightning package in its MRO
    own_names: frozenset[str] = frozenset()  # bound by its classes ahead of Lightning's in the MRO (its hooks)


_modules: dict[tuple[str, str, int], Module] = {}  # by (module, file, mtime)


def find_file(module: str) -> Path | None:
    """The source file of `module`, found as the import system would, without running any package's __init__."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        return Path(origin) if origin and origin.endswith(".py") else None
    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])  # a top-level name: finders only, nothing is executed
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def load(module: str) -> Module:
    file = find_file(module)
    if file is None:
        raise Unresolved(f"no source for {module}")
    key = (module, str(file), file.stat().st_mtime_ns)
    if key in _modules:
        return _modules[key]
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    bindings: dict[str, Any] = {}
    open_ended = False
    for stmt in tree.body:
        for name, value in _binds(stmt, package):
            open_ended = open_ended or name in ("*", "__getattr__")
            bindings[name] = value
    for stmt in tree.body:
        if isinstance(stmt, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for node in ast.walk(stmt):
                for name, _ in _binds(node, package) if isinstance(node, ast.stmt) else []:
                    bindings[name] = AMBIGUOUS
    _modules[key] = Module(module, bindings, open_ended)
    return _modules[key]


def _binds(stmt: ast.stmt, package: str) -> list[tuple[str, Any]]:
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [(stmt.name, stmt)]
    if isinstance(stmt, ast.Import):
        return [(a.asname, ("import", a.name)) if a.asname else (a.name.split(".")[0], ("import", a.name.split(".")[0]))
                for a in stmt.names]
    if isinstance(stmt, ast.ImportFrom):
        base = stmt.module or ""
        if stmt.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - stmt.level + 1] + ([base] if base else []))
        return [(a.asname or a.name, ("from", base, a.name)) for a in stmt.names]
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        return [(n, ("value", stmt.value)) if len(targets) == 1 else (n, AMBIGUOUS) for n in names]
    return []


def lookup(module: str, name: str, depth: int = 0) -> Any:
    """What `name` is in `module`: a ("class", module, ClassDef), ("module", name), ("value", module, expr) or a
    real object from typing/builtins."""
    if depth > 20:
        raise Unresolved(f"{module}.{name}: too many hops")
    if module in FREE_MODULES:
        if not hasattr(FREE_MODULES[module], name):
            raise Unresolved(f"{module}.{name}")
        return ("object", getattr(FREE_MODULES[module], name))
    mod = load(module)
    bound = mod.bindings.get(name)
    if bound is None:
        if mod.open_ended:
            raise Unresolved(f"{module}.{name}")
        if find_file(f"{module}.{name}") is not None:  # a submodule, reached as an attribute
            return ("module", f"{module}.{name}")
        raise Unresolved(f"{module} has no {name}")
    if bound is AMBIGUOUS or isinstance(bound, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise Unresolved(f"{module}.{name}")
    if isinstance(bound, ast.ClassDef):
        return ("class", module, bound)
    if bound[0] == "import":
        return ("module", bound[1])
    if bound[0] == "from":
        return lookup(bound[1], bound[2], depth + 1)
    return ("value", module, bound[1])


def reference(module: str, node: ast.expr) -> Any:
    """A Name or dotted Attribute in `module`, followed to what it names."""
    if isinstance(node, ast.Name):
        if node.id not in load(module).bindings and node.id in BUILTIN_TYPES and not load(module).open_ended:
            return ("object", BUILTIN_TYPES[node.id])
        return lookup(module, node.id)
    if isinstance(node, ast.Attribute):
        base = reference(module, node.value)
        if base[0] == "module":
            return lookup(base[1], node.attr)
    raise Unresolved(ast.unparse(node))


def annotation(module: str, node: ast.expr | None) -> Any:
    """An annotation as the object typing.get_type_hints would give; Unresolved when it is not builtins/typing."""
    if node is None:
        return EMPTY
    if isinstance(node, ast.Constant):
        if node.value is None:
            return type(None)
        if isinstance(node.value, str):
            return annotation(module, ast.parse(node.value, mode="eval").body)
        raise Unresolved(repr(node.value))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[annotation(module, node.left), annotation(module, node.right)]  # noqa: UP007
    if isinstance(node, ast.Subscript):
        origin = annotation(module, node.value)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if origin is typing.Literal:
            if not all(isinstance(i, ast.Constant) for i in items):
                raise Unresolved(ast.unparse(node))
            return typing.Literal[tuple(i.value for i in items)]  # type: ignore[valid-type]
        args = tuple(annotation(module, i) for i in items)
        return origin[args if len(args) > 1 else args[0]]
    found = reference(module, node)
    if found[0] == "object":
        return found[1]
    if found[0] == "value":
        return annotation(found[1], found[2])
    raise Unresolved(ast.unparse(node))


def read_class(path: str) -> StaticClass:
    """The class at dotted `path`, defined in source, with every base and annotation resolved."""
    module, _, attr = path.rpartition(".")
    found = lookup(module, attr)
    if found[0] != "class":
        raise Unresolved(f"{path} is not a class defined in source")
    owner, name = f"{found[1]}.{found[2].name}", found[2].name  # where it is defined, as inspect names it
    mro = _linearize(found[1], found[2], 0)
    lightning = frozenset(TERMINALS[q] for q, _, _ in mro if q in TERMINALS)
    namespace = next((TERMINALS[q][0] for q, _, _ in mro if q in TERMINALS), None)
    ahead = [node for _, _, node in mro[: next((i for i, (q, _, _) in enumerate(mro) if q in TERMINALS), len(mro))]]
    own = frozenset(n for node in ahead for n in _class_names(node))
    for qual, mod, node in mro:
        if qual in TERMINALS:  # Lightning's own __init__ takes (*args, **kwargs)
            return StaticClass(path, Signature(owner, name, {}, True), lightning, namespace, own)
        init = _init_of(node)
        if init is not None:
            if init.decorator_list:
                raise Unresolved(f"{qual}.__init__ is decorated")
            return StaticClass(path, _signature(owner, name, mod, init, lazy=False), lightning, namespace, own)
    return StaticClass(path, Signature(owner, name, {}, False), lightning, namespace, own)  # object.__init__


@functools.lru_cache(maxsize=4)
def read_init(path: str) -> Signature:
    """The own __init__ of a library class (Lightning's Trainer), read lazily: a parameter whose annotation or
    default does not resolve raises Unresolved only when a spec uses it. Its decorators keep the signature
    (functools.wraps), which inspect follows too. Read once per process: an installed library does not change
    under it, and a sweep checks the trainer arguments of each sampled trial."""
    module, _, name = path.rpartition(".")
    found = lookup(module, name)
    init = _init_of(found[2]) if found[0] == "class" else None
    if init is None:
        raise Unresolved(f"{path} has no __init__ in source")
    return _signature(path, name, found[1], init, lazy=True)


def _init_of(node: ast.ClassDef) -> ast.FunctionDef | None:
    """The class body's own __init__; Unresolved when it is bound any other way than one plain `def`."""
    defs = [s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"]
    others = [n for s in node.body if not (isinstance(s, ast.FunctionDef) and s.name == "__init__")
              for n in ast.walk(s) if _binds_init(n)]
    if len(defs) > 1 or others:
        raise Unresolved(f"{node.name}.__init__ is bound more than once or conditionally")
    return defs[0] if defs else None


def _class_names(node: ast.ClassDef) -> set[str]:
    """The names a class body binds (methods, properties, assignments); those under if/try count as bound, so a
    hook defined conditionally is never reported missing."""
    out: set[str] = set()
    compound = (ast.If, ast.Try, ast.With, ast.For, ast.While)
    for stmt in node.body:
        for sub in ast.walk(stmt) if isinstance(stmt, compound) else [stmt]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(sub.name)
            elif isinstance(sub, (ast.Assign, ast.AnnAssign)) and sub.value is not None:
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                out.update(t.id for t in targets if isinstance(t, ast.Name))
    return out


def _binds_init(node: ast.AST) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name == "__init__"
    return isinstance(node, ast.Name) and node.id == "__init__" and isinstance(node.ctx, ast.Store)


def _linearize(module: str, node: ast.ClassDef, depth: int) -> list[tuple[str, str, ast.ClassDef]]:
    """The class's MRO (C3), with Lightning's base classes as leaves."""
    qual = f"{module}.{node.name}"
    if qual in TERMINALS:
        return [(qual, module, node)]
    if depth > 30 or node.decorator_list or node.keywords or module.split(".")[0] in OPAQUE:
        raise Unresolved(f"{qual} is decorated, has a metaclass or lies outside the user's code")
    seqs: list[list[tuple[str, str, ast.ClassDef]]] = []
    for base in node.bases:
        found = reference(module, base)
        if found[0] == "object" and found[1] is object:
            continue
        if found[0] != "class":
            raise Unresolved(f"{qual}: base {ast.unparse(base)}")
        seqs.append(_linearize(found[1], found[2], depth + 1))
    seqs.append([s[0] for s in seqs])  # C3: the bases' own order is kept too
    out = [(qual, module, node)]
    pending = [s for s in seqs if s]
    while pending:
        head = next((s[0] for s in pending if not any(s[0][0] in (x[0] for x in t[1:]) for t in pending)), None)
        if head is None:
            raise Unresolved(f"{qual}: no consistent MRO")
        out.append(head)
        pending = [rest for rest in ([x for x in s if x[0] != head[0]] for s in pending) if rest]
    return out


def _signature(path: str, name: str, module: str, init: ast.FunctionDef, lazy: bool) -> Signature:
    args = init.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    entries = [(a, d, i < len(args.posonlyargs)) for i, (a, d) in enumerate(zip(positional, defaults, strict=True))]
    entries = entries[1:]  # self
    entries += [(a, d, False) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    params: dict[str, Param] = {}
    for arg, default, pos_only in entries:
        try:
            params[arg.arg] = Param(annotation(module, arg.annotation), _default(default), pos_only)
        except Unresolved:
            if not lazy:
                raise
            params[arg.arg] = Param(Unresolved, EMPTY if default is None else ..., pos_only)
    return Signature(path, name, params, args.kwarg is not None)


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return EMPTY
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise Unresolved(ast.unparse(node)) from None
