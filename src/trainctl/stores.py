"""The tracking stores this user submitted to, so that run-addressed commands work from any directory.

The embedded store lives in `<workdir>/mlflow.db` and workdir is relative to where `submit` ran: from another
directory `runs/mlflow.db` is a different (or no) store. `submit` records each store it used in a small per-user
index ($TRAINCTL_STATE_DIR, else $XDG_STATE_HOME/trainctl, else ~/.local/state/trainctl: the file `stores`, one
URI a line); `status`, `logs`, `cancel`, `resume`, `sync` and `ls` search the stores of that index when neither
--tracking-uri nor MLFLOW_TRACKING_URI names one. Reads never create a store: MLflow creates a missing sqlite
file (or file-store directory) when it opens it, so a missing one is skipped or reported, never opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from trainctl import tracking

INDEX_NAME = "stores"
KEEP = 100  # stores remembered; the oldest are forgotten first


def index_path() -> Path:
    if os.environ.get("TRAINCTL_STATE_DIR"):
        return Path(os.environ["TRAINCTL_STATE_DIR"]) / INDEX_NAME
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "trainctl" / INDEX_NAME


def _lines() -> list[str]:
    try:
        return [line.strip() for line in index_path().read_text().splitlines() if line.strip()]
    except OSError:
        return []


def remembered() -> list[str]:
    """The index, newest first, each URI once."""
    return list(dict.fromkeys(reversed(_lines())))


def remember(uri: str) -> None:
    """Add a store to the index (an append: concurrent submits do not lose each other's lines).

    A URI with a login in it (http://user:password@host) is not written down: give it with --tracking-uri.
    """
    if urlsplit(uri).username is not None:
        return
    lines = _lines()
    if lines[-1:] == [uri]:
        return
    path = index_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(lines) >= 2 * KEEP:  # compact: each store once, the newest KEEP
            from trainctl.rundir import atomic_write_text

            newest = list(dict.fromkeys([uri, *reversed(lines)]))[:KEEP]
            atomic_write_text(path, "".join(f"{u}\n" for u in reversed(newest)))
            return
        with open(path, "a") as fh:
            fh.write(f"{uri}\n")
    except OSError:  # an unwritable home must not stop a submit; the store is still named by the run's output
        return


def local_path(uri: str) -> Path | None:
    """The file or directory of a store on this machine (sqlite, file:, a bare path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(urlsplit(uri).path)
    if uri.startswith("/"):
        return Path(uri)
    return None


def exists(uri: str) -> bool:
    """Whether opening this store would read an existing one (a server is taken to exist)."""
    path = local_path(uri)
    return path is None or path.exists()


def reachable(uri: str) -> bool:
    """An existing local store, or a server that answers now (a stale entry must not cost MLflow's retries)."""
    if local_path(uri) is not None:
        return exists(uri)
    if uri.startswith(("http://", "https://")):
        from trainctl.mlflow_server import answers

        return answers(uri, 1.0)
    return True


def candidates(workdir: str = "runs") -> list[str]:
    """Where to look for a run when no store is named: this directory's embedded store, then the index."""
    here = tracking.embedded_uri(workdir)
    return [u for u in dict.fromkeys([here, *remembered()]) if reachable(u)]
