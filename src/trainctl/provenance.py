"""What re-creates a run's code and environment, recorded on the run at submit.

- the git commit (MLflow's `mlflow.source.git.commit`), the repository's root (`trainctl.git.root`) and, when the
  tree is dirty, the uncommitted changes, untracked files included, as `environment/git-diff.patch` with the tag
  `trainctl.git.dirty=true`: `git apply` on a checkout of the commit re-creates the tree;
- the installed package set, one `name==version` a line (lock-file style), as `environment/requirements.txt`;
- the python, torch and CUDA versions as tags (`trainctl.python`, `trainctl.torch`, `trainctl.cuda`).

`trainctl reproduce RUN` (trainctl.reproduce) reads them back.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("trainctl.provenance")

DIFF, PACKAGES = "environment/git-diff.patch", "environment/requirements.txt"
UNTRACKED_MAX_BYTES = 1 << 20  # a larger untracked file is data, not code: named in the patch's header, not copied


def _git(root: Path, *args: str) -> bytes | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode in (0, 1) else None  # `diff --no-index` exits 1 when files differ


def repo_root(path: Path) -> Path | None:
    out = _git(path, "rev-parse", "--show-toplevel")
    return Path(out.decode().strip()) if out else None


def dirty_diff(root: Path) -> bytes:
    """`git diff HEAD` (staged and unstaged) plus every untracked, not ignored file as an added file."""
    parts = [_git(root, "diff", "--binary", "HEAD") or b""]
    skipped = []
    for name in (_git(root, "ls-files", "--others", "--exclude-standard", "-z") or b"").split(b"\0"):
        if not name:
            continue
        path = root / name.decode(errors="surrogateescape")
        if path.is_file() and path.stat().st_size > UNTRACKED_MAX_BYTES:
            skipped.append(str(path.relative_to(root)))
            continue
        parts.append(_git(root, "diff", "--binary", "--no-index", "--", "/dev/null", name.decode()) or b"")
    head = b"".join(f"# untracked, too large to record: {s}\n".encode() for s in skipped)
    return head + b"".join(parts)


def package_set() -> str:
    """Every installed distribution as `name==version`, sorted: what `pip install -r` re-creates."""
    seen = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={version}\n" for name, version in sorted(seen.items()))


def versions() -> dict[str, str]:
    tags = {"trainctl.python": platform.python_version()}
    torch = sys.modules.get("torch")  # imported by validation already; never imported here just for a tag
    if torch is not None:
        tags["trainctl.torch"] = str(torch.__version__)
        tags["trainctl.cuda"] = str(torch.version.cuda or "none")
    else:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags["trainctl.torch"] = metadata.version("torch")
    return tags


def record(cl: Any, run_id: str, where: Path) -> None:
    """Log the run's provenance; `where` is a directory inside the user's repository (cwd or the spec's)."""
    tags = versions()
    root = repo_root(where)
    with tempfile.TemporaryDirectory(prefix="trainctl-provenance-") as tmp:
        files = [(Path(tmp) / "requirements.txt", package_set().encode())]
        if root is not None:
            tags["trainctl.git.root"] = str(root)
            diff = dirty_diff(root)
            tags["trainctl.git.dirty"] = "true" if diff.strip() else "false"
            if diff.strip():
                files.append((Path(tmp) / "git-diff.patch", diff))
        for path, data in files:
            path.write_bytes(data)
            cl.log_artifact(run_id, str(path), "environment")
    from mlflow.entities import RunTag

    cl.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
