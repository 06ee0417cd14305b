"""`trainctl gc`: free the disk that ended runs hold in a workdir, never what a live or resumable run needs.

A run's MLflow record (metrics, logs, the best and last checkpoints as artifacts) is never touched: gc removes local
files only, and only of runs that ended longer ago than `--older-than`:

- FINISHED: the whole run directory (`--keep-best`: all but `checkpoints/best/`, job.json and spec.yaml);
- FAILED, KILLED: resumable (`trainctl resume` continues them from their newest good checkpoint), so job.json,
  spec.yaml, attempts/ and that checkpoint stay; older resume checkpoints, mirror copies and stack dumps go
  (`--keep-best` keeps checkpoints/best/ too);
- PENDING, RUNNING, REQUEUED, a run whose state cannot be read, and a run with spooled metrics that `trainctl sync`
  has yet to upload: kept whole.

It says what it would remove and removes nothing unless `--delete` is given.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainctl import store_read
from trainctl.callbacks.checkpoint_io import manifest_path
from trainctl.callbacks.resume_checkpoint import latest_good
from trainctl.errors import UserError
from trainctl.rundir import JobFile
from trainctl.tracking import State, state_of

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s`, `2w` or a number of seconds → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise UserError.single("--older-than", f"'{text}' is not a duration",
                               "a number with a unit: 90s, 30m, 12h, 7d, 2w (0: every ended run)")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


@dataclass
class Plan:
    run_dir: Path
    what: str  # remove | trim | keep
    why: str
    paths: list[Path] = field(default_factory=list)
    size: int = 0


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def plan_run(run_dir: Path, older_than_s: float, keep_best: bool, now: float | None = None) -> Plan:
    """What gc does with one run directory, and why."""
    now = time.time() if now is None else now
    try:
        job = JobFile.read(run_dir)
        rec = store_read.get_run(job.tracking_uri, job.run_id)
    except Exception as exc:
        return Plan(run_dir, "keep", f"state unknown ({type(exc).__name__}: {exc})"[:200])
    if rec is None:
        return Plan(run_dir, "keep", f"run {job.run_id} is not in {job.tracking_uri}")
    state = state_of(rec.tags, rec.status)
    if not state.terminal:
        return Plan(run_dir, "keep", f"{state.value}: live")
    ended = (rec.end_time / 1000) if rec.end_time else run_dir.stat().st_mtime
    age = now - ended
    if age < older_than_s:
        return Plan(run_dir, "keep", f"{state.value} {age / 86400:.1f}d ago: newer than --older-than")
    if any((run_dir / "spool").glob("*")):
        return Plan(run_dir, "keep", f"{state.value}, but spool/ holds metrics not yet uploaded (trainctl sync)")
    if state is State.FINISHED and not keep_best:
        return Plan(run_dir, "remove", f"FINISHED {age / 86400:.1f}d ago", [run_dir], _size(run_dir))
    keep = {run_dir / "job.json", run_dir / "spec.yaml"}
    kept_dirs = {run_dir / "checkpoints" / "best"} if keep_best else set()
    why = f"{state.value} {age / 86400:.1f}d ago"
    if state is not State.FINISHED:  # resumable: its newest good checkpoint and attempt history stay
        kept_dirs.add(run_dir / "attempts")
        newest, _ = latest_good(run_dir)
        if newest is not None:
            keep |= {newest, manifest_path(newest)}
            why += f", resumable: keeps {newest.name}"
    paths = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and p not in keep
             and not any(d == p or d in p.parents for d in kept_dirs)]
    return Plan(run_dir, "trim" if paths else "keep", why if paths else f"{why}: nothing to remove", paths,
                sum(p.stat().st_size for p in paths))


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(p.parent for p in workdir.glob("*/job.json"))


def gc(workdir: Path, older_than: str, keep_best: bool, delete: bool) -> str:
    if not workdir.is_dir():
        raise UserError.single("--workdir", f"no directory {workdir}", "pass the workdir your runs are in")
    plans = [plan_run(d, parse_age(older_than), keep_best) for d in run_dirs(workdir)]
    lines = []
    for p in plans:
        if p.what == "keep":
            lines.append(f"keep    {p.run_dir.name}  ({p.why})")
        elif p.what == "remove":
            lines.append(f"remove  {p.run_dir.name}  ({p.why}): the whole directory, {_human(p.size)}")
        else:
            lines.append(f"trim    {p.run_dir.name}  ({p.why}): {len(p.paths)} files, {_human(p.size)}")
    total = sum(p.size for p in plans if p.what != "keep")
    chosen = [p for p in plans if p.what != "keep"]
    if not delete:
        lines.append(f"dry run: would free {_human(total)} in {len(chosen)} run(s) of {workdir}; "
                     "nothing removed (add --delete to remove these)")
        return "\n".join(lines)
    for planned in chosen:
        p = plan_run(planned.run_dir, parse_age(older_than), keep_best)  # again: a resume may have started since
        if p.what == "keep":
            lines.append(f"kept    {p.run_dir.name}  ({p.why})")
            continue
        for path in p.paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        if p.what == "trim":  # directories the removed files leave empty
            for d in sorted((d for d in p.run_dir.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
    lines.append(f"removed {_human(total)} from {len(chosen)} run(s) of {workdir}")
    return "\n".join(lines)
