"""The backends: one line each. A backend's modules (and what they import, e.g. Ray) load only when used.

Each backend is a folder, launchers/<name>/: `submit.py` (the submit side: a `LAUNCHER` implementing base.Launcher:
dry run, submit, status, logs, cancel) and `injob.py` (what runs inside the job: the entry function the scheduler
starts, and the backend's trainctl.injob.InJob handed to the worker), plus whatever else it needs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from trainctl.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Backend:
    install: str  # how to get what the backend needs, for the error when its import fails
    follow: bool = False  # `submit` and `resume` follow the job unless --detach (else only with --wait)
    scheduler_logs: bool = False  # the scheduler keeps logs the run directory has no copy of (`trainctl logs`)


BACKENDS: dict[str, Backend] = {
    "local": Backend("make venv", follow=True),
    "slurm": Backend("make venv"),
    "ray": Backend("make venv-ray (make ray-up installs it too), or pip install 'trainctl[ray]'", scheduler_logs=True),
}
KINDS = list(BACKENDS)
RAY_HINT = BACKENDS["ray"].install


def backend(kind: str) -> Backend:
    if kind not in BACKENDS:
        raise UserError.single("backend.kind", f"unknown backend {kind!r}; valid: {', '.join(KINDS)}",
                               did_you_mean(kind, KINDS) or f"use {', '.join(KINDS)}")
    return BACKENDS[kind]


def load(kind: str) -> ModuleType:
    """The backend's submit module; it exposes `LAUNCHER` (a base.Launcher)."""
    known = backend(kind)
    try:
        return importlib.import_module(f"trainctl.launchers.{kind}.submit")
    except ImportError as exc:
        raise UserError.single("backend.kind", f"backend {kind!r} is not installed: {exc}", known.install) from None
