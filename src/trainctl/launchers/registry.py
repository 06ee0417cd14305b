"""Backend registry: a backend's module (and its dependencies, e.g. Ray) is imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType

from trainctl.errors import UserError, did_you_mean
from trainctl.spec import BackendKind

KINDS = [k.value for k in BackendKind]
RAY_HINT = "make venv-ray (make ray-up installs it too), or pip install 'trainctl[ray]'"


def load(kind: str) -> ModuleType:
    """The backend module; it exposes `LAUNCHER` (a base.Launcher), `requeue_self(rank)` and `cancelled(job)`."""
    if kind not in KINDS:
        raise UserError.single("backend.kind", f"unknown backend {kind!r}; valid: {', '.join(KINDS)}",
                               did_you_mean(kind, KINDS) or "use local, slurm or ray")
    try:
        return importlib.import_module(f"trainctl.launchers.{kind}")
    except ImportError as exc:
        extra = {"ray": RAY_HINT}.get(kind, "make venv")
        raise UserError.single("backend.kind", f"backend {kind!r} is not installed: {exc}", extra) from None
