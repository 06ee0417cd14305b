"""Atomic, verified, asynchronous checkpoint files (real files, real torch.save)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from trainctl.callbacks.checkpoint_io import AtomicCheckpointIOImpl, manifest_path, verify, write_atomic
from trainctl.callbacks.resume_checkpoint import latest_good, resume_dir


def _state(value: float, n: int = 1000) -> dict:
    return {"global_step": int(value), "state_dict": {"w": torch.full((n,), value)}}


def test_write_is_atomic_and_verified(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    manifest = write_atomic(_state(3), path)
    assert verify(path) is None
    assert json.loads(manifest_path(path).read_text())["sha256"] == manifest["sha256"]
    assert not list(tmp_path.glob(".*tmp*")), "no temp files left behind"


def test_truncated_and_corrupted_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    write_atomic(_state(3), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in (verify(path) or "")
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert "checksum" in (verify(path) or "")
    manifest_path(path).unlink()
    assert "no manifest" in (verify(path) or "")


def test_latest_good_skips_bad_newest(tmp_path: Path) -> None:
    rdir = resume_dir(tmp_path)
    for step in (10, 20, 30):
        write_atomic(_state(step), rdir / f"step-{step:09d}.ckpt")
    newest = rdir / "step-000000030.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])
    (rdir / "step-000000040.ckpt").write_bytes(b"half-written, no manifest")
    good, skipped = latest_good(tmp_path)
    assert good == rdir / "step-000000020.ckpt"
    assert [p.name for p, _ in skipped] == ["step-000000040.ckpt", "step-000000030.ckpt"]


def test_async_save_holds_the_state_of_the_step_it_names(tmp_path: Path) -> None:
    """Training changes the weights right after save returns; the file still holds the saved step's values."""
    io = AtomicCheckpointIOImpl(async_save=True)
    weights = torch.zeros(2_000_000)
    gate = threading.Event()
    original = torch.save

    def slow_save(obj, f, *a, **k):  # the background write starts only after training moved on
        gate.wait(5)
        return original(obj, f, *a, **k)

    torch.save = slow_save
    try:
        io.save_checkpoint({"global_step": 7, "state_dict": {"w": weights}}, tmp_path / "s.ckpt")
        weights.add_(1.0)  # the next optimizer step, in place
        gate.set()
        io.teardown()
    finally:
        torch.save = original
    loaded = io.load_checkpoint(tmp_path / "s.ckpt")
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], torch.zeros(2_000_000))
    assert io.blocked_s and io.blocked_s[0] < 5


def test_remove_waits_for_pending_write(tmp_path: Path) -> None:
    io = AtomicCheckpointIOImpl(async_save=True)
    path = tmp_path / "r.ckpt"
    io.save_checkpoint(_state(1, 100_000), path)
    io.remove_checkpoint(path)
    io.teardown()
    assert not path.exists() and not manifest_path(path).exists()
