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
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

from trainctl import tracking
from trainctl.errors import UserError

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


def ui_command(uri: str) -> str:
    """A command that serves this run's store from any directory (the store's path is absolute)."""
    if uri.startswith(("http://", "https://")):
        return uri
    path = local_path(uri)
    if uri.startswith("sqlite:///") and path is not None and path.name == "mlflow.db":
        cmd = [sys.executable, "-m", "trainctl.mlflow_server", "--workdir", str(path.parent)]
    elif path is not None:
        cmd = [sys.executable, "-m", "mlflow", "ui", "--workers", "1", "--backend-store-uri",
               uri if uri.startswith(("sqlite:", "file:")) else Path(uri).as_uri()]
    else:
        return uri
    return f"{shlex.join(cmd)}  (then open http://127.0.0.1:5000)"


def answers(uri: str, timeout_s: float = 1.0) -> bool:
    """Whether a server answers at all now: any HTTP reply counts (a login it asks for is an answer), a refused
    or timed-out connection does not. One short probe instead of MLflow's retries, which take ≈ 15 s."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


NAMED_PROBE_S = 10.0  # a store the user named: a loaded server gets time; a refused connection fails at once


def reachable(uri: str, timeout_s: float = 1.0) -> bool:
    """An existing local store, or a server that answers now (a stale entry must not cost MLflow's retries)."""
    if local_path(uri) is not None:
        return exists(uri)
    if uri.startswith(("http://", "https://")):
        return answers(uri, timeout_s)
    return True


def search_plan(workdir: str = "runs") -> tuple[list[str], list[str]]:
    """Where to look for a run when no store is named: this directory's embedded store, then the index; and the
    servers of those that do not answer now (named to the user, never skipped silently). A local store that
    does not exist is no store: skipped."""
    here = tracking.embedded_uri(workdir)
    ok: list[str] = []
    silent: list[str] = []
    for uri in dict.fromkeys([here, *remembered()]):
        if reachable(uri):
            ok.append(uri)
        elif local_path(uri) is None:
            silent.append(uri)
    return ok, silent


def candidates(workdir: str = "runs") -> list[str]:
    return search_plan(workdir)[0]


def not_answering(uris: list[str], named: bool, lead: str = "") -> UserError:
    """The error for tracking servers that do not answer: which, and how to bring them back.
    named: given by --tracking-uri / MLFLOW_TRACKING_URI (else: found in the index of stores used); lead: what
    was (not) found elsewhere, said first."""
    where = ("check --tracking-uri / MLFLOW_TRACKING_URI" if named else
             f"pass --tracking-uri to search another store, or drop the line from {index_path()}")
    return UserError.single(
        "--tracking-uri" if named else "tracking store",
        f"{lead}the tracking store {', '.join(uris)} does not answer (is its server up?)",
        f"start it (`make mlflow` serves ./runs/mlflow.db at http://127.0.0.1:5000; or run the command that "
        f"serves this store), or {where}")
