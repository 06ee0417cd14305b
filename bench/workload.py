"""The CPU benchmarks' workload and the job spec that runs it, as a user would write it.

scikit-learn's digits x4 (7188 samples, all of them in training), an MLP 64→H→H→10 with ReLU, Adam(lr=1e-3),
cross-entropy, `self.log("train/loss")` per step, one torch thread per rank: the same workload as the CPU DDP
anchor script (bench/README.md). `BenchMLP`/`BenchDigits` are what trainctl runs (named by class path in the
spec); `mlp()`/`digits()` are what the raw loops build, so both sides train the same network on the same tensors.
`StepEnds` rides in the spec's `callbacks:` and records rank 0's step ends inside the real worker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from bench.stats import peak_rss_mb, rss_mb


def digits(repeat: int = 4) -> torch.utils.data.TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    return torch.utils.data.TensorDataset(x.repeat(repeat, 1), torch.tensor(y).repeat(repeat))


def mlp(hidden: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class BenchMLP(pl.LightningModule):
    """The anchor's LightningModule: the same network, loss, optimizer and `self.log` per step."""

    def __init__(self, hidden: int = 64, lr: float = 1e-3, width: int = 0) -> None:
        super().__init__()
        self.lr = lr
        if width:  # a wide layer stack (checkpointing benchmark): width² parameters per layer
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(64, width), *[nn.Linear(width, width) for _ in range(hidden)],
                                     nn.Linear(width, 10))
        else:
            self.net = mlp(hidden)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class BenchDigits(pl.LightningDataModule):
    def __init__(self, batch_size: int = 32, repeat: int = 4) -> None:
        super().__init__()
        self.batch_size, self.repeat = batch_size, repeat

    def setup(self, stage: str | None = None) -> None:
        self.train_set = digits(self.repeat)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class StepEnds(pl.Callback):
    """Step-end times (perf_counter) and epoch boundaries of this rank, written as JSON when training ends.

    Named in a spec's `callbacks:` so that it runs inside the real worker. The interval between consecutive step
    ends covers everything trainctl and Lightning do per step, wherever in the hook order the mark is taken.
    Rank 0 writes `out`, other ranks `out.rank<N>`. `rss_every` samples this process's resident set every N steps
    (the leak check).
    """

    def __init__(self, out: str, rss_every: int = 0) -> None:
        self.out, self.rss_every = out, rss_every
        self.ends: list[float] = []
        self.epoch_ends: list[int] = []
        self.rss: list[tuple[int, float]] = []
        self.started_wall: float | None = None
        self.first_step_wall: float | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.started_wall = time.time()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append(time.perf_counter())
        if self.first_step_wall is None:
            self.first_step_wall = time.time()
        if self.rss_every and len(self.ends) % self.rss_every == 0:
            self.rss.append((len(self.ends), rss_mb()))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_ends.append(len(self.ends))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        out = Path(self.out if trainer.global_rank == 0 else f"{self.out}.rank{trainer.global_rank}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "ends": self.ends, "epoch_ends": self.epoch_ends, "train_start_wall": self.started_wall,
            "first_step_wall": self.first_step_wall, "pid": os.getpid(), "threads": torch.get_num_threads(),
            "max_rss_mb": peak_rss_mb(), "rss": self.rss, "rank": trainer.global_rank,
        }))


def bench_spec(name: str, hidden: int, batch: int, epochs: int, workdir: str, clock_out: str, world: int = 2,
               rss_every: int = 0, more_callbacks: list[dict[str, Any]] | None = None, **extra: Any
               ) -> dict[str, Any]:
    """The job as a user would write it: the workload, the clock, no periodic or top-k checkpoints.

    `extra` takes dotted keys, e.g. {"tracking.log_every_n_steps": 1, "model.init_args.width": 4096}.
    """
    spec: dict[str, Any] = {
        "name": name,
        "experiment": "trainctl-bench",
        "model": {"class_path": "bench.workload.BenchMLP", "init_args": {"hidden": hidden}},
        "data": {"class_path": "bench.workload.BenchDigits", "init_args": {"batch_size": batch}},
        "trainer": {"max_epochs": epochs},
        "callbacks": [{"class_path": "bench.workload.StepEnds",
                       "init_args": {"out": clock_out, "rss_every": rss_every}}, *(more_callbacks or [])],
        "resources": {"nodes": 1, "devices_per_node": world, "accelerator": "cpu", "cpus_per_task": 1},
        "fault_tolerance": {"max_restarts": 0, "on_failure": "fail"},
        "workdir": workdir,
        "backend": {"kind": "local"},
    }
    for key, value in extra.items():
        node = spec
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return spec


