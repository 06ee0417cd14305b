"""Fully sharded training (resources.strategy: fsdp) against DDP on CPU ranks: per-rank training state, step time,
checkpoint blocking.

    python -m bench.fsdp_memory [--quick] [--out bench/results/fsdp_memory.json]

Every run is trainctl's worker path (bench.worker_path: trainctl.worker.fit with build_trainer's strategy and
checkpoint IO) on gloo ranks, one torch thread each, training a layer stack of the digits (bench.workload.BenchMLP
with `width`: 64→W, LAYERS x W→W, →10) with Adam.

  state      bytes this rank holds of parameters + gradients + optimizer state after an optimizer step, each
             storage counted once (`StateBytes`, on every rank): the largest rank with fsdp ÷ the largest with DDP,
             on 2 and on 4 ranks. FSDP flattens the module into one unit here and shards it 1/N (plus padding).
  step       median step interval after the first epoch, fsdp ÷ DDP, 2 ranks, alternated D F F D.
  blocking   the loop's whole wait per resume checkpoint with fsdp (sharded, async: DCP stages each rank's shard
             in host memory and writes it on the checkpoint thread) ÷ a synchronous `torch.save` + flush + fsync of
             the full state (model + optimizer, `dump_checkpoint` on rank 0 of the DDP run, dump not counted).
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

from bench.procs import write_json
from bench.stats import median
from bench.worker_path import worker

WIDTH, LAYERS = 2048, 4  # 16.9 M parameters: 67 MB, 202 MB with Adam's two moments
# key: (goal, unit, what): run_all.GOALS takes these
GOALS: dict[str, tuple[float | None, str, str]] = {
    "fsdp_state_ratio_2": (0.55, "x", "per-rank parameters + gradients + optimizer state, fsdp ÷ DDP, 2 CPU ranks"),
    "fsdp_state_ratio_4": (0.30, "x", "the same on 4 CPU ranks"),
    "fsdp_step_ratio": (None, "x", f"step time fsdp ÷ DDP, 2 CPU ranks (width {WIDTH}, {LAYERS} layers, batch 32)"),
    "fsdp_checkpoint_blocking_ratio": (0.10, "x", "loop blocked per sharded async checkpoint ÷ sync full-state "
                                       "torch.save + fsync (≈ 200 MB)"),
}


def _storages(tensors: Any) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and hasattr(t, "untyped_storage"):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class StateBytes(pl.Callback):
    """At step `at` (after its optimizer step) every rank writes the bytes it holds of parameters, gradients and
    optimizer state to `out`.rank<N>; rank 0 of a DDP run (`sync_saves` > 0) also times a synchronous
    torch.save + fsync of the full state that many times."""

    def __init__(self, out: str, at: int = 3, sync_saves: int = 0) -> None:
        self.out, self.at, self.sync_saves = out, at, sync_saves

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.at:
            return
        import torch

        module = trainer.strategy.model
        params = list(module.parameters())
        for m in module.modules():  # FSDP's flat parameters, whatever its parameters() shows
            handle = getattr(m, "_handle", None)
            if handle is not None and getattr(handle, "flat_param", None) is not None:
                params.append(handle.flat_param)
        state = [t for opt in trainer.optimizers for s in opt.state.values() for t in s.values()
                 if torch.is_tensor(t)]
        out = {"rank": trainer.global_rank, "world": trainer.world_size, "params": _storages(params),
               "grads": _storages(p.grad for p in params), "optimizer": _storages(state)}
        out["total"] = out["params"] + out["grads"] + out["optimizer"]
        if self.sync_saves:  # dump_checkpoint gathers (the RNG states) on every rank; rank 0 writes
            dumped = trainer._checkpoint_connector.dump_checkpoint()
            if trainer.global_rank == 0:
                out["sync_save_fsync_s"], out["sync_bytes"] = self._sync_saves(dumped)
        Path(f"{self.out}.rank{trainer.global_rank}").write_text(json.dumps(out))

    def _sync_saves(self, dumped: dict[str, Any]) -> tuple[list[float], int]:
        import torch

        path = Path(self.out).with_name("sync.ckpt")
        times = []
        for _ in range(self.sync_saves):
            t0 = time.perf_counter()
            with open(path, "wb") as fh:
                torch.save(dumped, fh)
                fh.flush()
                os.fsync(fh.fileno())
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size
        path.unlink()
        return times, size


def _run(strategy: str, world: int, tmp: Path, epochs: int, batches: int, sync_saves: int = 0) -> dict[str, Any]:
    out = str(tmp / f"state-{strategy}-{world}-{time.time_ns()}.json")
    cfg = {"hidden": LAYERS, "batch": 32, "epochs": epochs, "world": world, "logger": "off",
           "extra": {"model.init_args.width": WIDTH, "trainer.limit_train_batches": batches,
                     "checkpoint.every_n_train_steps": 10},
           "sets": [f"resources.strategy={strategy}"],
           "callbacks": [{"class_path": "bench.fsdp_memory.StateBytes",
                          "init_args": {"out": out, "sync_saves": sync_saves}}]}
    r = worker(cfg)
    ranks = [json.loads(Path(f"{out}.rank{i}").read_text()) for i in range(world)]
    return {"step_s": r["step_s"], "steps": r["steps"], "blocked_s": r["timers"].get("checkpoint_save", []),
            "io_blocked_s": r["io_blocked_s"], "ranks": ranks, "max_state_bytes": max(x["total"] for x in ranks)}


def measure(quick: bool = False, log: Any = print) -> dict[str, Any]:
    reps, batches = (1, 12) if quick else (2, 30)
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as tmp_s:
        tmp = Path(tmp_s)
        runs: dict[str, list[dict[str, Any]]] = {"ddp": [], "fsdp": []}
        for rep in range(reps):  # D F, F D: the step ratio alternated
            for strategy in (["ddp", "fsdp"] if rep % 2 == 0 else ["fsdp", "ddp"]):
                r = _run(strategy, 2, tmp, 2, batches, sync_saves=3 if strategy == "ddp" else 0)
                runs[strategy].append(r)
                log(f"  {strategy} 2 ranks: step {1e3 * r['step_s']:.1f} ms, state/rank "
                    f"{r['max_state_bytes'] / 2**20:.1f} MiB, blocked {[round(b, 3) for b in r['blocked_s']]} s")
        four = {s: _run(s, 4, tmp, 1, 5) for s in ("ddp", "fsdp")}
        for s, r in four.items():
            log(f"  {s} 4 ranks: state/rank {r['max_state_bytes'] / 2**20:.1f} MiB")
    ddp2, fsdp2 = runs["ddp"][0], runs["fsdp"][0]
    sync = [t for r in runs["ddp"] for t in r["ranks"][0]["sync_save_fsync_s"]]
    blocked = [b for r in runs["fsdp"] for b in r["blocked_s"]]
    step = {s: median([r["step_s"] for r in rs]) for s, rs in runs.items()}
    return {
        "width": WIDTH, "layers": LAYERS, "batch": 32, "reps": reps, "quick": quick,
        "state_bytes_per_rank": {"ddp_2": ddp2["max_state_bytes"], "fsdp_2": fsdp2["max_state_bytes"],
                                 "ddp_4": four["ddp"]["max_state_bytes"], "fsdp_4": four["fsdp"]["max_state_bytes"]},
        "state_ranks": {"ddp_2": ddp2["ranks"], "fsdp_2": fsdp2["ranks"], "ddp_4": four["ddp"]["ranks"],
                        "fsdp_4": four["fsdp"]["ranks"]},
        "state_ratio_2": fsdp2["max_state_bytes"] / ddp2["max_state_bytes"],
        "state_ratio_4": four["fsdp"]["max_state_bytes"] / four["ddp"]["max_state_bytes"],
        "step_ms": {s: 1e3 * v for s, v in step.items()}, "step_ratio": step["fsdp"] / step["ddp"],
        "blocked_s": blocked, "io_blocked_s": [b for r in runs["fsdp"] for b in r["io_blocked_s"]],
        "sync_save_fsync_s": sync, "sync_bytes": ddp2["ranks"][0]["sync_bytes"],
        "blocking_ratio": median(blocked) / median(sync),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    out = measure(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
