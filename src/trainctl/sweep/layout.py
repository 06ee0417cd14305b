"""The sweep's directory on shared storage: sweep.json, each trial's files, and the locks that order writers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trainctl.rundir import JsonRecord, atomic_write_text


@dataclass
class SweepFile(JsonRecord):
    FILE: ClassVar[str] = "sweep.json"

    parent_run_id: str
    tracking_uri: str
    backend: str
    spec: dict[str, Any]  # the validated base spec (resolved), before any trial's values
    sweep: dict[str, Any]  # SweepConfig.to_raw()
    import_dirs: list[str] = field(default_factory=list)
    source: str = ""  # the spec file



def trial_dir(sweep_dir: Path, index: int) -> Path:
    return sweep_dir / "trials" / f"{index:04d}"


def trial_indices(sweep_dir: Path) -> list[int]:
    """Trials that have started once (their parameters are fixed, or their start failed)."""
    root = sweep_dir / "trials"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if (p / "params.json").is_file() or (p / "attempts").is_dir())


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created): the trials of one sweep ask, tell and update the parent in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
