"""This machine's processes, read from /proc: which belong to a local job, whether any is left, and signalling them.

A local job's controller starts in a session (and process group) of its own, so the group holds every process the
job started: the controller, the ranks, their loader workers and whatever they spawned, even once reparented. The
controller's descendants are counted too, for jobs whose controller shares its submitter's group.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, …]; None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie has ended: only its exit status waits to be collected)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return fields is None or fields[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _table() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (ppid, pgrp)."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] not in ("Z", "X"):
            out[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return out


def job_processes(leader: int, marker: str) -> list[int]:
    """The live processes of the job whose controller is `leader`: its process group and its descendants.

    `marker` (the job's log folder) is in the command line of the controller and of every rank; a group none of
    whose members carries it is not this job's (its id was reused after the job ended), so it is left alone.
    """
    table = _table()
    group = [pid for pid, (_, pgrp) in table.items() if pgrp == leader]
    found = set(group) if any(marker in cmdline(pid) for pid in group) else set()
    if leader in table and marker in cmdline(leader):
        found.add(leader)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [leader]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return sorted(found)


def describe(pid: int) -> str:
    cmd = cmdline(pid)
    return f"pid {pid} ({cmd[:100]})" if cmd else f"pid {pid}"


def send(pids: list[int], sig: int, group: int | None = None) -> None:
    """Signal each pid; with `group` (a job's own process group, known to be its), also the whole group at once,
    which reaches a process started after the pids were listed."""
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def own_group(leader: int, pids: list[int]) -> int | None:
    """`leader`'s process group when some of the job's `pids` (from job_processes) are in it, else None."""
    table = _table()
    return leader if any(table.get(pid, (0, 0))[1] == leader for pid in pids) else None
