"""Checkpoint blocking: time the training loop waits per checkpoint ÷ a synchronous torch.save + fsync of the
same state; and the step slowdown while the background write runs.

    python -m bench.checkpointing [--quick] [--out bench/results/checkpointing.json]

One rank of trainctl's worker path (bench.worker_path: trainctl.worker.fit, build_trainer with its AtomicCheckpointIO,
async_save on) trains an MLP whose parameters + Adam state are ≈ 1 GB (64→4096, 5 x 4096→4096, →10: 84 M
parameters, 3 x 337 MB) on the digits, one torch thread, checkpoint.every_n_train_steps = K. In the same
process, alternating with trainctl's checkpoints (steps K/2, 3K/2, …), `SyncSaveProbe` takes the same state
(`trainer._checkpoint_connector.dump_checkpoint()`, what trainctl saves) and writes it with a plain
`torch.save` into a file, flush, fsync — after waiting for trainctl's pending write, outside its timer.

  blocked     the loop's whole wait per trainctl checkpoint: ResumeCheckpoint.save → trainer.save_checkpoint
              (dump_checkpoint, RNG states, the IO plugin's snapshot and hand-off, the barrier), timed around it.
  io_blocked  the part inside AtomicCheckpointIO.save_checkpoint (its own blocked_s).
  sync        torch.save + flush + fsync of the dumped state (dump time reported beside it, not counted).
  slowdown    median interval of steps that overlap a background write ÷ median of steps that overlap none
              (intervals holding a checkpoint or a probe save excluded).
The checkpoints go to the run directory on the disk under the system temp dir (fsync reaches the device).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from bench.procs import write_json
from bench.stats import median
from bench.worker_path import worker


class SyncSaveProbe(pl.Callback):
    """Synchronous torch.save + fsync of the state trainctl checkpoints, at steps K/2 + n·K; also records
    when trainctl's background writes start and end."""

    def __init__(self, out: str, every: int, offset: int) -> None:
        self.out, self.every, self.offset = out, every, offset
        self.sync: list[dict[str, float]] = []
        self.writes: list[tuple[float, float, int]] = []
        self.probe_windows: list[tuple[float, float]] = []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from trainctl.callbacks import checkpoint_io

        original = checkpoint_io.write_atomic

        def write_atomic(checkpoint: Any, path: Path) -> Any:
            t0 = time.perf_counter()
            manifest = original(checkpoint, path)
            self.writes.append((t0, time.perf_counter(), int(manifest.get("size", 0))))
            return manifest

        checkpoint_io.write_atomic = write_atomic  # the IO plugin's pool looks it up at each submit

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step < self.offset or (step - self.offset) % self.every:
            return
        t_start = time.perf_counter()
        trainer.strategy.checkpoint_io.wait()  # not timed: the previous background write finishes first
        t0 = time.perf_counter()
        state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        t1 = time.perf_counter()
        path = Path(trainer.default_root_dir) / "sync-probe.ckpt"
        with open(path, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        t2 = time.perf_counter()
        size = path.stat().st_size
        path.unlink()
        del state
        self.sync.append({"dump_s": t1 - t0, "save_fsync_s": t2 - t1, "bytes": size})
        self.probe_windows.append((t_start, time.perf_counter()))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.strategy.checkpoint_io.wait()
        Path(self.out).write_text(json.dumps({"sync": self.sync, "writes": self.writes,
                                              "probe_windows": self.probe_windows}))


def run(width: int, layers: int, steps: int, every: int, batch: int = 32) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    probe_out = str(tmp / "probe.json")
    cfg = {
        "world": 1, "hidden": layers, "batch": batch, "epochs": 1, "logger": "off", "dir": str(tmp), "keep_ends": True,
        "extra": {"model.init_args.width": width, "trainer.max_steps": steps,
                  "checkpoint.every_n_train_steps": every, "checkpoint.async_save": True,
                  "checkpoint.keep_resume": 1},
        "callbacks": [{"class_path": "bench.checkpointing.SyncSaveProbe",
                       "init_args": {"out": probe_out, "every": every, "offset": every // 2}}],
    }
    try:
        r = worker(cfg, timeout=1800)
        probe = json.loads(Path(probe_out).read_text())
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    blocked = r["timers"].get("checkpoint_save", [])
    io_blocked = r["io_blocked_s"]
    periodic = blocked  # every resume checkpoint of the run (the last one at the epoch's end)
    ends = r["ends"]
    windows = [(a, b) for a, b, _ in probe["writes"]]
    save_marks = probe["probe_windows"]
    clean, during = [], []
    for i in range(2, len(ends)):  # the first interval holds the warm-up
        a, b = ends[i - 1], ends[i]
        blocked_here = any(a <= s0 <= b for s0, _ in save_marks) or (i % every == 0)
        if blocked_here:
            continue
        (during if any(w0 < b and w1 > a for w0, w1 in windows) else clean).append(b - a)
    sync = [s["save_fsync_s"] for s in probe["sync"]]
    state_bytes = probe["sync"][0]["bytes"] if probe["sync"] else (probe["writes"][0][2] if probe["writes"] else 0)
    out = {
        "width": width, "layers": layers, "steps": steps, "every_n_train_steps": every,
        "state_gb": state_bytes / 1e9,
        "blocked_s": periodic, "io_blocked_s": io_blocked[: len(periodic)],
        "sync_save_fsync_s": sync, "sync_dump_s": [s["dump_s"] for s in probe["sync"]],
        "background_write_s": [b - a for a, b, _ in probe["writes"]],
        "step_s_clean": median(clean), "step_s_during_write": median(during),
        "steps_clean": len(clean), "steps_during_write": len(during),
    }
    out["ratio"] = median(periodic) / median(sync) if sync and periodic else float("nan")
    out["io_ratio"] = median(io_blocked[: len(periodic)]) / median(sync) if sync and io_blocked else float("nan")
    out["slowdown_during_write"] = (out["step_s_during_write"] / out["step_s_clean"]
                                    if clean and during else float("nan"))
    out["write_gb_per_s"] = state_bytes / 1e9 / median(out["background_write_s"]) if probe["writes"] else float("nan")
    out["sync_gb_per_s"] = state_bytes / 1e9 / median(sync) if sync else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a ≈ 25 MB state, 12 steps")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        out = run(width=1024, layers=2, steps=12, every=4)
    else:
        out = run(args.width, args.layers, args.steps, args.every)
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
