"""Shared pieces of the CPU benchmarks: the anchor's workload, a step clock that rides in a trainctl spec, stats.

The workload is the one of ../shared/baselines/cpu_ddp_anchor.py: scikit-learn's digits x4 (7188 samples, all
of them in training), an MLP 64→H→H→10 with ReLU, Adam(lr=1e-3), cross-entropy, `self.log("train/loss")` per
step, one torch thread per rank. `BenchMLP`/`BenchDigits` are what trainctl runs (named by class path in the spec);
`mlp()`/`digits()` are what the raw loops build, so both sides train the same network on the same tensors.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the workload


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


class StepClock(pl.Callback):
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


# ---------------------------------------------------------------- statistics


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def intervals_after_warmup(ends: list[float], first_epoch_steps: int) -> list[float]:
    """Intervals between consecutive step ends, from the last step of the warm-up epoch on (the anchor's rule)."""
    start = max(first_epoch_steps - 1, 0)
    return [b - a for a, b in zip(ends[start:], ends[start + 1 :])]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def summary(values: list[float]) -> dict[str, float]:
    vs = sorted(values)
    return {"median": median(vs), "min": vs[0] if vs else float("nan"), "max": vs[-1] if vs else float("nan"),
            "n": len(vs)}


# ---------------------------------------------------------------- processes and environment


def write_json(out: dict[str, Any], path: Path | None) -> None:
    """A benchmark module's result: printed, and written to --out when given."""
    text = json.dumps(out, indent=2)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(text)


def python_env(threads: int = 1) -> dict[str, str]:
    """The environment of every benchmark child: the repository importable; `threads` intra-op threads, or
    (threads=0, for `trainctl submit`) whatever trainctl itself sets from resources.cpus_per_task."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads:
            env[var] = str(threads)
        else:
            env.pop(var, None)
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_json(args: list[str], timeout: float = 600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child Python module; its last stdout line starting with `{` is the result.

    The child runs in a session of its own. Once it has printed its result it gets 30 s to exit; then its whole
    process group is killed: a rank can deadlock in its own teardown (ProcessGroupGloo's destructor joins a gloo
    thread that waits for the GIL the destructor holds, seen with torch 2.13), and the figure is already out.
    """
    import signal
    import threading

    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or python_env(), cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, lambda: _killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("{"):
                break
        try:
            proc.wait(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        timer.cancel()
    reader.join(timeout=5)
    result = [ln for ln in lines if ln.startswith("{")]
    if not result:
        raise RuntimeError(f"{' '.join(args)} failed (rc {proc.returncode}):\n{''.join(lines)[-3000:]}\n"
                           f"{''.join(err)[-3000:]}")
    return json.loads(result[-1])


def _killpg(pid: int, sig: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def load_now() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> dict[str, Any]:
    import contextlib

    import lightning_utilities
    import mlflow
    import submitit

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    mem_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {
        "host": platform.node(), "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
        "mem_gb": round(mem_gb, 1), "python": platform.python_version(), "torch": torch.__version__,
        "pytorch_lightning": pl.__version__, "lightning_utilities": lightning_utilities.__version__,
        "mlflow": mlflow.__version__, "submitit": submitit.__version__, "load_avg_1m_at_start": load_now(),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
    }


def _git(*args: str) -> str:
    try:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return res.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- trainctl's worker path, in processes started here


def bench_spec(name: str, hidden: int, batch: int, epochs: int, workdir: str, clock_out: str, world: int = 2,
               rss_every: int = 0, more_callbacks: list[dict[str, Any]] | None = None, **extra: Any
               ) -> dict[str, Any]:
    """The job as a user would write it: the workload, the clock, no periodic or top-k checkpoints.

    `extra` takes dotted keys, e.g. {"tracking.log_every_n_steps": 1, "model.init_args.width": 4096}.
    """
    spec: dict[str, Any] = {
        "name": name,
        "experiment": "trainctl-bench",
        "model": {"class_path": "bench.common.BenchMLP", "init_args": {"hidden": hidden}},
        "data": {"class_path": "bench.common.BenchDigits", "init_args": {"batch_size": batch}},
        "trainer": {"max_epochs": epochs},
        "callbacks": [{"class_path": "bench.common.StepClock",
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


def _worker_rank(rank: int, port: int, cfg: dict[str, Any]) -> None:
    """One rank of trainctl's worker path as `worker.entrypoint.train` runs it, minus the run bookkeeping:
    seed, the module and data module from the spec, `build_trainer` (trainctl's strategy, callbacks, logger,
    checkpoint IO, step-metrics path), the heartbeat and watchdog, the resumable data path, `trainer.fit`.

    cfg["logger"]: "none" (no logger at all: the Trainer's loggers emptied), "off" (trainctl's logger without a
    sink, as on ranks > 0) or "mlflow" (rank 0 feeds a real MetricsSink to cfg["tracking_uri"], cfg["run_id"]).
    """
    world = cfg.get("world", 2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), NODE_RANK="0", LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(cfg.get("threads", 1))
    from trainctl.callbacks.binding import make
    from trainctl.components import import_class, instantiate, namespace_of
    from trainctl.rundir import JobFile
    from trainctl.spec import parse_spec, resolve_env
    from trainctl.spec_checks import apply_override
    from trainctl.worker.build import build_trainer
    from trainctl.worker.data import ResumableData
    from trainctl.worker.watchdog import HeartbeatImpl, Watchdog

    tmp = Path(cfg["dir"])
    raw = bench_spec("worker", cfg["hidden"], cfg["batch"], cfg["epochs"], str(tmp / "runs"), str(tmp / "clock.json"),
                     world=world, rss_every=cfg.get("rss_every", 0), more_callbacks=cfg.get("callbacks"),
                     **cfg.get("extra", {}))
    for s in cfg.get("sets", []):
        apply_override(raw, s)
    spec = parse_spec(raw, check_classes=False)
    ns = namespace_of(import_class(spec.model.class_path))
    ns.pl.seed_everything(spec.seed_everything, workers=True, verbose=False)
    model = instantiate(resolve_env(spec.model), ns.pl.LightningModule)
    data = instantiate(resolve_env(spec.data), ns.pl.LightningDataModule)
    run_dir = Path(cfg.get("run_dir") or tmp / "run")
    # build_trainer reads the tracking URI from the run's handoff file, as on a submitted run (each rank writes
    # the same file atomically)
    JobFile(run_id=cfg.get("run_id", "bench"), tracking_uri=cfg.get("tracking_uri", ""), backend="local",
            spec=raw).write(run_dir)
    sink = None
    if rank == 0 and cfg.get("logger") == "mlflow":
        from trainctl import tracking
        from trainctl.metrics import MetricsSink

        tracking.current_state(cfg["tracking_uri"], cfg["run_id"])  # as the worker's _attach: mlflow imported
        sink = MetricsSink(cfg["tracking_uri"], cfg["run_id"], run_dir / "spool")
    wd = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", rank, 1, on_stall=lambda w: None)
    trainer, built = build_trainer(ns, spec, run_dir, cfg.get("run_id", "bench"), sink,
                                   extra_callbacks=(make(HeartbeatImpl, ns.pl.Callback, wd.start()),))
    if cfg.get("logger") == "none":
        trainer.loggers = []
    ResumableData(ns, trainer, spec.seed_everything or 0, rank, world).install(data)
    timers: dict[str, list[float]] = {}

    def timed(obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers.setdefault(label, []).append(time.perf_counter() - t0)

        setattr(obj, name, wrapper)

    timed(built.resume, "save", "checkpoint_save")  # the loop's whole wait per resume checkpoint
    profile = cfg.get("profile", "")
    if profile == "parts":
        from trainctl.callbacks import preemption

        agreed = next(c for c in trainer.callbacks if isinstance(c, preemption.AgreedStopImpl))
        timed(agreed, "_launch", "agreed._launch")
        timed(agreed, "_collect", "agreed._collect")
    prof = None
    clock = next(c for c in trainer.callbacks if isinstance(c, StepClock))
    if rank == 0 and profile == "cprofile":  # after the warm-up epoch, rank 0 only
        import cProfile

        prof = cProfile.Profile()
        orig_epoch_end = clock.on_train_epoch_end

        def epoch_end(tr: Any, pm: Any) -> None:
            orig_epoch_end(tr, pm)
            if len(clock.epoch_ends) == 1:
                prof.enable()

        clock.on_train_epoch_end = epoch_end  # type: ignore[method-assign]
    t_fit = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_s = time.perf_counter() - t_fit
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(tmp / "rank0.prof"))
    t_td = time.perf_counter()
    built.checkpoint_io.teardown()
    teardown_s = time.perf_counter() - t_td
    wd.stop()
    if sink is not None:
        sink.close(timeout_s=60)
    if rank == 0:
        extra_out: dict[str, Any] = {"timers": timers, "fit_s": fit_s, "teardown_s": teardown_s,
                                     "io_blocked_s": list(getattr(built.checkpoint_io, "blocked_s", []))}
        if sink is not None:
            extra_out["sink"] = {"delivered": sink.delivered, "failures": sink.failures}
        if profile == "hooks":
            durations = trainer.profiler.recorded_durations
            steps = len(clock.ends)
            extra_out["hooks_ms_per_step"] = {a: 1e3 * sum(d) / steps for a, d in
                                              sorted(durations.items(), key=lambda kv: -sum(kv[1]))
                                              if len(d) >= steps // 2}
        (tmp / "extra.json").write_text(json.dumps(extra_out))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: see run_json (a gloo destructor can deadlock)


def run_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run trainctl's worker path on cfg["world"] ranks (processes started here); rank 0's clock and extras."""
    import tempfile

    import torch.multiprocessing as mp

    own = "dir" not in cfg
    cfg = dict(cfg)
    if own:
        cfg["dir"] = tempfile.mkdtemp(prefix="bench-worker-")
    tmp = Path(cfg["dir"])
    tmp.mkdir(parents=True, exist_ok=True)
    # fork: the ranks inherit this interpreter's imports (torch, Lightning, trainctl), seconds saved per run
    mp.start_processes(_worker_rank, args=(free_port(), cfg), nprocs=cfg.get("world", 2), start_method="fork")
    data = json.loads((tmp / "clock.json").read_text())
    data.update(json.loads((tmp / "extra.json").read_text()))
    others = sorted(tmp.glob("clock.json.rank*"))
    data["max_rss_mb_ranks"] = [data["max_rss_mb"]] + [json.loads(p.read_text())["max_rss_mb"] for p in others]
    first = data["epoch_ends"][0] if data["epoch_ends"] else 0
    ts = intervals_after_warmup(data["ends"], first)
    data.update(step_s=median(ts), mean_step_s=sum(ts) / len(ts) if ts else float("nan"), steps=len(ts), intervals=ts)
    if own:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return data


def worker_cli(argv: list[str] | None = None) -> int:
    """`python -m bench.common '<cfg json>'`: run_worker in a fresh interpreter; prints one JSON line."""
    import importlib

    cfg = json.loads((argv or sys.argv[1:])[0])
    import trainctl.worker.build
    import trainctl.worker.entrypoint  # noqa: F401

    # Through the importable module, not __main__: the spec names bench.common.StepClock, and mp.spawn pickles
    # _worker_rank by its module's name.
    out = importlib.import_module("bench.common").run_worker(cfg)
    if not cfg.get("keep_ends"):
        out.pop("ends", None)
    print(json.dumps(out), flush=True)
    return 0


def worker(cfg: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    return run_json(["-m", "bench.common", json.dumps(cfg)], timeout=timeout)


if __name__ == "__main__":
    sys.exit(worker_cli())
