"""Sharded checkpoints (fsdp): one directory per checkpoint, every rank writing its own shard with PyTorch's
distributed checkpoint (DCP), committed as a whole.

The directory is written aside (`.name.tmp`): every rank's shard files (`__<rank>_<n>.distcp`, fsynced by DCP's
writer), DCP's `.metadata`, and Lightning's `meta.pt` (loops, callbacks, RNG states, the agreed stop). Each rank
hashes the files it wrote; rank 0 gathers the hashes, renames the directory into place and writes the manifest
(`name.manifest.json`: each file's size and sha256) last. A directory whose files do not all match the manifest,
or that has none, is never loaded, so a missing or truncated shard makes the previous checkpoint the newest good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

META_FILE = "meta.pt"  # Lightning's name for everything that is not the model or an optimizer
DCP_METADATA = ".metadata"


def tmp_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def file_digest(path: Path) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
            size += len(block)
    return {"size": size, "sha256": sha.hexdigest()}


def own_files(directory: Path, rank: int) -> list[Path]:
    """The files `rank` wrote: its DCP shards, and on rank 0 the two metadata files too."""
    mine = sorted(directory.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        mine += [directory / DCP_METADATA, directory / META_FILE]
    return mine


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_meta(meta: dict[str, Any], directory: Path) -> None:
    with open(directory / META_FILE, "wb") as fh:
        torch.save(meta, fh)
        fh.flush()
        os.fsync(fh.fileno())


def commit(path: Path, digests: list[dict[str, dict[str, Any]]], meta: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, once every rank's shard is on disk: the aside directory into place, then the manifest, last."""
    from trainctl.callbacks.checkpoint_io import manifest_path

    files: dict[str, dict[str, Any]] = {}
    for part in digests:
        files.update(part)
    tmp = tmp_dir(path)
    fsync_path(tmp)
    remove(path)  # a re-save of the same step (an earlier attempt's copy of the same state)
    os.replace(tmp, path)
    fsync_path(path.parent)
    manifest = {"file": path.name, "sharded": True, "files": files, "global_step": meta.get("global_step"),
                "epoch": meta.get("epoch"), "world_size": len(digests), "complete": True}
    mpath = manifest_path(path)
    mtmp = mpath.with_name(f".{mpath.name}.tmp-{os.getpid()}")
    with open(mtmp, "w") as fh:
        fh.write(json.dumps(manifest))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(mtmp, mpath)
    fsync_path(path.parent)
    return manifest


def verify_dir(path: Path, manifest: dict[str, Any]) -> str | None:
    """None when every file the manifest names is there with its size and checksum, else why not."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no shard files"
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return f"shard {name} missing"
        size = f.stat().st_size
        if size != want.get("size"):
            return f"shard {name}: size {size} != manifest {want.get('size')} (truncated?)"
    for name, want in sorted(files.items()):
        if file_digest(path / name)["sha256"] != want.get("sha256"):
            return f"shard {name}: checksum mismatch (corrupted)"
    return None


def remove(path: Path) -> None:
    """A sharded checkpoint and its manifest; the manifest first, so that a half-removed directory never verifies."""
    from trainctl.callbacks.checkpoint_io import manifest_path

    manifest_path(path).unlink(missing_ok=True)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def consolidate(path: Path) -> dict[str, Any]:
    """One ordinary Lightning checkpoint (the full model state dict, no optimizer state) from a verified sharded
    directory, read in this one process without a process group: the hand-off file `load_from_checkpoint` loads."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    meta = torch.load(path / META_FILE, map_location="cpu", weights_only=False)  # trainctl's own verified file
    meta["state_dict"] = state["model"]
    meta.pop("optimizer_states", None)
    meta.pop("lr_schedulers", None)
    return meta
