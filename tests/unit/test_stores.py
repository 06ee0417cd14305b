"""The per-user index of stores, import directories, and the resume that would train nothing: pure logic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from trainctl import stores
from trainctl.resume import _nothing_to_train
from trainctl.rundir import import_dirs_for, use_import_dirs
from trainctl.spec import parse_spec

from .spec_helpers import digits_raw


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRAINCTL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_index_is_newest_first_each_store_once(state: Path) -> None:
    assert stores.remembered() == []
    for uri in ["sqlite:////a/mlflow.db", "http://h:5000", "sqlite:////a/mlflow.db", "sqlite:////a/mlflow.db"]:
        stores.remember(uri)
    assert stores.remembered() == ["sqlite:////a/mlflow.db", "http://h:5000"]
    assert stores.index_path().read_text().count("\n") == 3  # the same store twice in a row: one line
    stores.remember("https://me:secret@h")
    assert "secret" not in stores.index_path().read_text()


def test_index_is_compacted(state: Path) -> None:
    for i in range(2 * stores.KEEP + 1):
        stores.remember(f"sqlite:////s{i % (stores.KEEP + 10)}/mlflow.db")
    lines = stores.index_path().read_text().splitlines()
    assert len(lines) <= 2 * stores.KEEP
    assert stores.remembered()[0] == f"sqlite:////s{(2 * stores.KEEP) % (stores.KEEP + 10)}/mlflow.db"


def test_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINCTL_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert stores.index_path() == tmp_path / "trainctl" / "stores"


def test_candidates_skip_missing_local_stores(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(state)
    real = state / "elsewhere" / "mlflow.db"
    real.parent.mkdir()
    real.write_bytes(b"")
    stores.remember(f"sqlite:///{real}")
    stores.remember(f"sqlite:///{state / 'gone' / 'mlflow.db'}")
    assert stores.candidates() == [f"sqlite:///{real}"]
    (state / "runs").mkdir()
    (state / "runs" / "mlflow.db").write_bytes(b"")
    assert stores.candidates() == [f"sqlite:///{state / 'runs' / 'mlflow.db'}", f"sqlite:///{real}"]
    assert not (state / "gone").exists()


@pytest.mark.parametrize(("uri", "path"), [("sqlite:////x/m.db", "/x/m.db"), ("file:///x/mlruns", "/x/mlruns"),
                                           ("/x/mlruns", "/x/mlruns"), ("http://h:5000", None),
                                           ("databricks", None)])
def test_local_path(uri: str, path: str | None) -> None:
    assert stores.local_path(uri) == (Path(path) if path else None)


def test_import_dirs_spec_dir_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert import_dirs_for("jobs/x.yaml") == [str(tmp_path / "jobs"), str(tmp_path)]
    assert import_dirs_for("x.yaml") == [str(tmp_path)]
    monkeypatch.setattr(sys, "path", ["/already", *sys.path])
    use_import_dirs([str(tmp_path / "jobs"), "/already", str(tmp_path / "missing")])
    assert sys.path[:2] == [str(tmp_path / "jobs"), "/already"]
    assert str(tmp_path / "missing") not in sys.path


def _checkpoint(path: Path, epochs: int, step: int) -> Path:
    progress = {"current": {"ready": epochs, "completed": epochs - 1, "started": epochs, "processed": epochs}}
    torch.save({"global_step": step, "epoch": epochs - 1, "loops": {"fit_loop": {"epoch_progress": progress}}}, path)
    return path


@pytest.mark.parametrize(("trainer", "epochs", "step", "refused"), [
    ({"max_epochs": 2}, 2, 40, "trainer.max_epochs=4"),
    ({"max_epochs": 3}, 2, 40, None),
    ({"max_epochs": -1, "max_steps": 40}, 2, 40, "trainer.max_steps=80"),
    ({"max_epochs": 5, "max_steps": 100}, 2, 40, None),
    ({}, 1000, 10, "trainer.max_epochs=2000"),  # Lightning's default: 1000 epochs
    ({"max_time": "00:01:00:00"}, 1000, 10, None),
])
def test_nothing_to_train(tmp_path: Path, trainer: dict, epochs: int, step: int, refused: str | None) -> None:
    raw = digits_raw()
    raw["trainer"] = trainer
    spec = parse_spec(raw, check_classes=False)
    found = _nothing_to_train(_checkpoint(tmp_path / "c.ckpt", epochs, step), spec)
    assert (found[1] if found else None) == refused
