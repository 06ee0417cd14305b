"""How an attempt ended, and whose fault it was: the user's own bug fails fast, the infrastructure is retried.

A retry cannot fix a deterministic exception in the user's code (it would fail the same way at the same step),
while a lost peer, a taken port or a reset connection is gone on the next attempt. An exception counts as the
infrastructure's when it (or an exception it was raised from) is a torch.distributed error, an OS connection
error, or a gloo/NCCL/TCPStore message about a peer or an address; every other exception is the user's, and
its reason names the innermost frame in the user's own files (not torch, Lightning, trainctl's machinery, the
standard library or installed packages): that is the line to fix.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path

from trainctl.runstate import Cause


@dataclass(frozen=True)
class Ending:
    """One rank's view of how its attempt ended."""

    cause: Cause
    detail: str = ""

    @property
    def failure(self) -> bool:
        return self.cause is Cause.user_error or self.cause.infrastructure


# gloo, NCCL and c10d's TCPStore report a lost peer or a taken address as a RuntimeError with these words.
_INFRA_TEXT = re.compile(
    r"EADDRINUSE|address already in use|connection (reset|refused|closed)|broken pipe|"
    r"gloo/transport|ProcessGroupGloo|NCCL (error|communicator)|ncclRemoteError|ncclSystemError|"
    r"TCPStore|socket timeout|Socket Timeout|peer closed|no route to host|network is unreachable",
    re.IGNORECASE)
_INFRA_ERRNOS = {errno.EADDRINUSE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                 errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}
_LIBRARY_PACKAGES = ("torch", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities",
                     "trainctl", "submitit", "ray", "mlflow")
_USER_PARTS_OF_TRAINCTL = ("examples", "testing")  # trainctl's example models and fault injection are user code


def classify(exc: BaseException) -> Ending:
    """The Ending for an exception caught around the user's objects on one rank."""
    if is_infrastructure(exc):
        return Ending(Cause.network, _describe(exc))
    # A library may wrap the user's exception (jsonargparse while building the objects): the one raised in the
    # user's frame is the one to describe.
    link, frame = _user_link(exc)
    what = _describe(link if link is not None else exc)
    return Ending(Cause.user_error, f"{what} (at {frame})" if frame else what)


_LOCAL_BIND = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)


def local_bind_failure(ending: Ending) -> bool:
    """This rank could not bind its own port (the rendezvous store): its own failure, whatever its peers did."""
    return ending.cause is Cause.network and bool(_LOCAL_BIND.search(ending.detail))


def is_infrastructure(exc: BaseException) -> bool:
    for link in _chain(exc):
        if isinstance(link, ConnectionError) or _is_dist_error(link):
            return True
        if isinstance(link, OSError) and link.errno in _INFRA_ERRNOS:
            return True
        if isinstance(link, RuntimeError) and _INFRA_TEXT.search(str(link)):
            return True
    return False


def user_frame(exc: BaseException) -> str:
    """'file:line in function' of the innermost frame in the user's files, or '' when none is."""
    return _user_link(exc)[1]


def _user_link(exc: BaseException) -> tuple[BaseException | None, str]:
    """The first exception of the chain (outermost first) raised through the user's files, and its innermost
    frame there."""
    roots = _library_roots()
    for link in _chain(exc):
        for fs in reversed(traceback.extract_tb(link.__traceback__)):
            if _is_user_file(fs.filename, roots):
                return link, f"{_shown_path(fs.filename)}:{fs.lineno} in {fs.name}"
    return None, ""


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in out and len(out) < 16:
        out.append(link)
        link = link.__cause__ or link.__context__
    return out


def _is_dist_error(exc: BaseException) -> bool:
    dist = sys.modules.get("torch.distributed")
    base = getattr(dist, "DistError", None) if dist is not None else None
    return isinstance(base, type) and isinstance(exc, base)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= 300 else first[:297] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _library_roots() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(directories that are never user code, trainctl directories that are)."""
    never: list[str] = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            never.append(os.path.realpath(path))
    for name in _LIBRARY_PACKAGES:
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if file:
            never.append(os.path.realpath(os.path.dirname(file)))
    trainctl_dir = os.path.realpath(os.path.dirname(os.path.dirname(__file__)))
    user = tuple(os.path.join(trainctl_dir, part) for part in _USER_PARTS_OF_TRAINCTL)
    return tuple(never), user


def _is_user_file(filename: str, roots: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
    if filename.startswith("<") or "site-packages" in filename or "dist-packages" in filename:
        return False
    path = os.path.realpath(filename)
    never, user = roots
    if any(path == u or path.startswith(u + os.sep) for u in user):
        return True
    return not any(path == n or path.startswith(n + os.sep) for n in never)


def _shown_path(filename: str) -> str:
    """Relative to the working directory when the file lies under it (what the user sees in an editor)."""
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return filename
