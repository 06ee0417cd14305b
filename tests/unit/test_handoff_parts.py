"""Pure parts of the hand-off commands: gc's durations, the recorded diff re-creating a dirty tree, package drift."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trainctl import provenance
from trainctl.errors import UserError
from trainctl.gc import parse_age
from trainctl.reproduce import checkout, package_drift


def test_parse_age() -> None:
    assert parse_age("90s") == 90 and parse_age("30m") == 1800 and parse_age("12h") == 43200
    assert parse_age("7d") == 7 * 86400 and parse_age("2w") == 14 * 86400 and parse_age("0") == 0
    assert parse_age("1.5h") == 5400
    for bad in ("", "soon", "-1d", "7 days", "d"):
        with pytest.raises(UserError, match="--older-than"):
            parse_age(bad)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def test_recorded_diff_recreates_the_dirty_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / ".gitignore").write_text("runs/\n")
    (repo / "model.py").write_text("A = 1\n")
    (repo / "gone.py").write_text("x\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    (repo / "model.py").write_text("A = 2\n")  # modified
    (repo / "gone.py").unlink()  # deleted
    (repo / "pkg").mkdir()
    (repo / "pkg" / "new.py").write_text("B = 3\n")  # untracked
    (repo / "weights.bin").write_bytes(bytes(range(256)))  # untracked, binary
    (repo / "big.dat").write_bytes(b"0" * (provenance.UNTRACKED_MAX_BYTES + 1))  # data, not code
    (repo / "runs").mkdir()
    (repo / "runs" / "x.ckpt").write_text("ignored")
    assert provenance.repo_root(repo / "pkg") == repo.resolve()
    diff = provenance.dirty_diff(repo)
    assert b"# untracked, too large to record: big.dat" in diff and b"x.ckpt" not in diff

    dest = tmp_path / "checkout"
    checkout(str(repo), commit, dest, diff)
    assert (dest / "model.py").read_text() == "A = 2\n" and not (dest / "gone.py").exists()
    assert (dest / "pkg" / "new.py").read_text() == "B = 3\n"
    assert (dest / "weights.bin").read_bytes() == bytes(range(256))
    assert not (dest / "big.dat").exists() and not (dest / "runs").exists()
    with pytest.raises(UserError, match="is not in"):
        checkout(str(repo), "0" * 40, tmp_path / "other", None)


def test_package_drift_names_what_differs() -> None:
    recorded = "numpy==2.0.0\ntorch==2.13.0\nold==1\n"
    now = "numpy==2.1.0\ntorch==2.13.0\nnew==3\n"
    assert package_drift(recorded, now) == ["new: - -> 3", "numpy: 2.0.0 -> 2.1.0", "old: 1 -> -"]
    assert package_drift(provenance.package_set(), provenance.package_set()) == []
    assert "torch==" in provenance.package_set()
