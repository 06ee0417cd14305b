"""A run directory: everything one job keeps on (shared) disk, and the handoff from submit to the worker.

    <workdir>/<name>-<run_id[:8]>/
        job.json        the handoff: run id, tracking URI, backend, resolved spec, import directories (at submit)
        spec.yaml       the resolved spec, for people
        attempts/       one JSON per attempt: start, end, outcome, cause (written by global rank 0)
        checkpoints/    resume/ checkpoints (+ manifests), best/ top-k, mirror/ what MLflow holds (last, best)
        logs/           scheduler/submitit output, one file per rank and attempt
        spool/          metrics and hyperparameters not delivered to MLflow (`trainctl sync` uploads them)
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self


class JsonRecord:
    """A dataclass kept as one JSON file in a directory, written atomically; fields it does not know are ignored on
    read (a newer submitter's extra fields)."""

    FILE: ClassVar[str]

    @classmethod
    def path(cls, directory: Path) -> Path:
        return directory / cls.FILE

    def write(self, directory: Path) -> None:
        atomic_write_text(self.path(directory), json.dumps(asdict(self), indent=2))  # type: ignore[call-overload]

    @classmethod
    def read(cls, directory: Path) -> Self:
        data = json.loads(cls.path(directory).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class JobFile(JsonRecord):
    FILE: ClassVar[str] = "job.json"

    run_id: str
    tracking_uri: str
    backend: str
    spec: dict[str, Any]
    master_port: int = 0
    created: float = field(default_factory=time.time)
    import_dirs: list[str] = field(default_factory=list)  # where the user's modules were importable at submit



def import_dirs_for(spec_path: str | Path) -> list[str]:
    """Where `python train.py` users expect their modules to import from: the spec's directory, then the cwd."""
    dirs = [Path(spec_path).absolute().parent, Path.cwd()]
    return list(dict.fromkeys(str(d.resolve()) for d in dirs))


def use_import_dirs(dirs: list[str]) -> None:
    """Put the job's import directories first on sys.path, as `python train.py` puts the script's directory.

    Called by the CLI before it imports the spec's classes and first thing on every rank (a console script or a
    scheduler-started process has neither directory on its path). Directories missing here are skipped.
    """
    for d in reversed(dirs):
        if d not in sys.path and Path(d).is_dir():
            sys.path.insert(0, d)


def run_dir_for(workdir: str, name: str, run_id: str) -> Path:
    return Path(workdir).absolute() / f"{name}-{run_id[:8]}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write aside, fsync, rename: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
