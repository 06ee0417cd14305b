"""No import cycle between trainctl's packages and top-level modules: dependencies point one way.

Every import counts, at module level or inside a function (a lazy import is still a dependency), relative ones
resolved. Modules collapse to their unit: `trainctl.worker.entrypoint` is `worker`, `trainctl.spec` is `spec`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import trainctl

ROOT = Path(trainctl.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, name: str | None = None) -> set[str]:
    """Every trainctl module this file (module `name`) imports, relative imports resolved."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m == "trainctl" or m.startswith("trainctl.")}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def unit_graph() -> dict[str, set[str]]:
    """unit -> the units it imports (trainctl's own only; a unit's imports of itself dropped)."""
    known = {_unit(_module_name(p)) for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        src = _unit(_module_name(path))
        if src is None:
            continue
        graph[src]
        for target in _imported(path):
            dst = _unit(target)
            if dst is not None and dst != src and dst in known:
                graph[src].add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its units in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_import_counts(tmp_path: Path) -> None:
    """Relative imports resolve against the module's package; imports inside functions count too."""
    source = tmp_path / "entrypoint.py"
    source.write_text("from . import attempt\nfrom ..runstate import State\n"
                      "def f():\n    import trainctl.launchers.registry\n    from trainctl.spec import Spec\n")
    found = _imported(source, "trainctl.worker.entrypoint")
    assert {"trainctl.worker.attempt", "trainctl.runstate", "trainctl.launchers.registry", "trainctl.spec"} <= found
    assert {_unit(m) for m in found} == {"worker", "runstate", "launchers", "spec"}
    graph = unit_graph()
    assert {"worker", "callbacks", "launchers", "runstate", "injob"} <= set(graph), "the walk sees every unit"


def test_no_cycle_between_packages_and_top_level_modules() -> None:
    graph = unit_graph()
    cycles = []
    while (cycle := find_cycle(graph)) is not None:  # every cycle, each named once: drop its first edge, look again
        cycles.append(" -> ".join(cycle))
        graph[cycle[0]].discard(cycle[1])
    assert not cycles, "import cycles between trainctl's units:\n  " + "\n  ".join(cycles)


def test_source_files_stay_under_the_line_limit() -> None:
    """The project's rule: a file past ~400 lines is split by concern."""
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by concern: {long}"


def test_every_command_the_parser_knows_has_a_handler() -> None:
    import argparse

    from trainctl import cli

    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli.COMMANDS)
