"""Atomic, verified, optionally asynchronous checkpoint files.

Every checkpoint is written aside (`.name.tmp`), flushed, fsynced and renamed, and only then marked complete
by a manifest (`name.manifest.json`: size, sha256, step). A file without a manifest, or whose bytes do not
match it, is never loaded. With `async_save` the training loop blocks only while the state is copied off
the device; a single background thread writes, so it runs no collective and cannot deadlock training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from trainctl.callbacks.sharded_checkpoint import consolidate, verify_dir
from trainctl.callbacks.sharded_checkpoint import remove as remove_sharded

log = logging.getLogger("trainctl.checkpoint")
MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(path: str | Path) -> Path:
    return Path(f"{path}{MANIFEST_SUFFIX}")


def snapshot(checkpoint: dict[str, Any], reuse: list[torch.Tensor] | None = None) -> tuple[Any, list[torch.Tensor]]:
    """A copy that later training steps cannot change: tensors copied to host memory.

    With `reuse` (the buffers of the previous snapshot, whose write has finished) tensors of the same shape and
    dtype are copied into those buffers: a fresh 1 GB allocation costs more in page faults than the copy itself.
    """
    leaves, spec = tree_flatten(checkpoint)
    old = iter(reuse or [])
    buffers: list[torch.Tensor] = []
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            src = leaf.detach()
            buf = next(old, None)
            if buf is None or buf.shape != src.shape or buf.dtype != src.dtype or src.is_sparse:
                buf = torch.empty_like(src, device="cpu")
            buf.copy_(src)
            buffers.append(buf)
            out.append(buf)
        else:
            out.append(leaf)
    return tree_unflatten(out, spec), buffers


class _HashingWriter:
    """A file object that hashes what passes through it, so verifying costs no second read."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def write_atomic(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        writer = _HashingWriter(fh)
        torch.save(checkpoint, writer)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    manifest = {
        "file": path.name, "size": writer.size, "sha256": writer.sha.hexdigest(),
        "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"), "complete": True,
    }
    mpath = manifest_path(path)
    mtmp = mpath.with_name(f".{mpath.name}.tmp-{os.getpid()}")
    mtmp.write_text(json.dumps(manifest))
    with open(mtmp) as fh:
        os.fsync(fh.fileno())
    os.replace(mtmp, mpath)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return manifest


def stage_as(path: Path, dest: Path) -> tuple[Path, Path]:
    """`path` and its manifest under another name (a hard link, or a copy across file systems): the pair to upload
    where a fixed name must replace the previous one. Returns (checkpoint, manifest) at `dest`. A sharded
    checkpoint (a directory) is staged as one consolidated file: what is uploaded is always loadable alone."""
    import shutil

    if path.is_dir():
        manifest = write_atomic(consolidate(path), dest)
        manifest.update(source=path.name, consolidated=True)
        mdest = manifest_path(dest)
        atomic = mdest.with_name(f".{mdest.name}.tmp-{os.getpid()}")
        atomic.write_text(json.dumps(manifest))
        os.replace(atomic, mdest)
        return dest, mdest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    manifest = json.loads(manifest_path(path).read_text())
    manifest.update(file=dest.name, source=path.name)
    atomic = manifest_path(dest).with_name(f".{manifest_path(dest).name}.tmp-{os.getpid()}")
    atomic.write_text(json.dumps(manifest))
    os.replace(atomic, manifest_path(dest))
    return dest, manifest_path(dest)


def verify(path: str | Path) -> str | None:
    """None when the file matches its manifest, else why it must not be loaded."""
    path = Path(path)
    mpath = manifest_path(path)
    if not path.exists():
        return "file missing"
    if not mpath.is_file():
        return "no manifest (the write never completed)"
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if path.is_dir():
        return verify_dir(path, manifest)
    size = path.stat().st_size
    if size != manifest.get("size"):
        return f"size {size} != manifest {manifest.get('size')} (truncated?)"
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    if sha.hexdigest() != manifest.get("sha256"):
        return "checksum mismatch (corrupted)"
    return None


class AtomicCheckpointIOImpl:
    """Lightning CheckpointIO (bound to the user's namespace) behind every checkpoint trainctl writes."""

    def __init__(self, async_save: bool = True) -> None:
        super().__init__()
        self.async_save = async_save
        self.pool: ThreadPoolExecutor | None = None
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.last_error: BaseException | None = None
        self.blocked_s: list[float] = []  # time the training loop waited per save (benchmarks read it)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import time

        path = Path(path)
        t0 = time.perf_counter()
        self._raise_background_error()
        if not self.async_save:
            write_atomic(checkpoint, path)
            self.blocked_s.append(time.perf_counter() - t0)
            return
        self.wait()  # the previous write still reads the buffers about to be reused
        frozen, self.buffers = snapshot(checkpoint, getattr(self, "buffers", None))
        self.submit(path, write_atomic, frozen, path)
        self.blocked_s.append(time.perf_counter() - t0)

    def submit(self, path: Path, work: Callable[..., Any], *args: Any) -> None:
        """Run `work(*args)` on the writer thread as the write of `path` (`wait`, `after_write` and the next
        save's error see it). The sharded saves of worker/fsdp.py commit through here too."""
        self._raise_background_error()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainctl-ckpt")
        future = self.pool.submit(work, *args)
        future.add_done_callback(self._record_error)
        with self.lock:
            self.pending[str(path)] = future

    def _record_error(self, future: Future) -> None:
        if future.exception() is not None:
            self.last_error = future.exception()
            log.error("background checkpoint write failed: %r", self.last_error)

    def _raise_background_error(self) -> None:
        if self.last_error is not None:
            err, self.last_error = self.last_error, None
            raise RuntimeError(f"an earlier checkpoint write failed: {err!r}") from err

    def wait(self, path: str | Path | None = None) -> None:
        """Block until the write of `path` (or every pending write) is on disk."""
        with self.lock:
            futures = [self.pending.pop(str(path), None)] if path is not None else list(self.pending.values())
            if path is None:
                self.pending.clear()
        for f in futures:
            if f is not None:
                f.result()

    def after_write(self, path: str | Path, action: Callable[[], None]) -> None:
        """Run `action` once `path` is on disk: now if it is, else on the writer thread right after its write.
        Never if the write failed (then the error surfaces at the next save)."""
        with self.lock:
            future = self.pending.get(str(path))
        if future is None:
            action()
            return

        def run(done: Future) -> None:
            if done.exception() is None:
                try:
                    action()
                except Exception:
                    log.exception("after writing %s", path)

        future.add_done_callback(run)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        self.wait(path)
        problem = verify(path)
        if problem:
            raise RuntimeError(f"refusing to load {path}: {problem}")
        # trainctl's own files, verified above; RNG and loader states are not weights-only
        return torch.load(path, map_location=map_location or "cpu", weights_only=bool(weights_only))

    def remove_checkpoint(self, path: Any) -> None:
        self.wait(path)
        if Path(path).is_dir():
            remove_sharded(Path(path))
            return
        for p in (Path(path), manifest_path(path)):
            p.unlink(missing_ok=True)

    def teardown(self) -> None:
        self.wait()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
