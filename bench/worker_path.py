"""trainctl's worker path in processes started here: `trainctl.worker.fit.fit` on N gloo ranks, without submit,
the launcher or the run's bookkeeping — for the figures whose B side cannot be written as a spec (no logger, a
probe callback timed in-process) and for the per-step diagnostics.

    python -m bench.worker_path '<cfg json>'      # one JSON line: rank 0's step ends, timers and extras

cfg: hidden, batch, epochs, world (2), threads (1), rss_every, callbacks (more spec callbacks), extra (dotted spec
keys), sets (`--set` overrides), dir (kept when given), keep_ends, profile ("hooks" | "parts" | "cprofile") and
logger: "none" (the Trainer's loggers emptied), "off" (trainctl's logger without a sink, as on ranks > 0) or
"mlflow" (rank 0 feeds a real MetricsSink to cfg["tracking_uri"], cfg["run_id"]).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.procs import free_port, run_json
from bench.stats import intervals_after_warmup, median
from bench.workload import StepEnds, bench_spec


def _worker_rank(rank: int, port: int, cfg: dict[str, Any]) -> None:
    """One rank: the spec as a user writes it, then the worker's own fit seam; rank 0 writes its timers."""
    world = cfg.get("world", 2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), NODE_RANK="0", LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(cfg.get("threads", 1))
    from trainctl.spec import apply_override, parse_spec
    from trainctl.worker.fit import Fit, fit
    from trainctl.worker.watchdog import Watchdog

    tmp = Path(cfg["dir"])
    extra = dict(cfg.get("extra", {}))
    if cfg.get("tracking_uri"):
        extra["tracking.uri"] = cfg["tracking_uri"]
    raw = bench_spec("worker", cfg["hidden"], cfg["batch"], cfg["epochs"], str(tmp / "runs"), str(tmp / "clock.json"),
                     world=world, rss_every=cfg.get("rss_every", 0), more_callbacks=cfg.get("callbacks"), **extra)
    for s in cfg.get("sets", []):
        apply_override(raw, s)
    spec = parse_spec(raw, check_classes=False)
    run_dir = Path(cfg.get("run_dir") or tmp / "run")
    sink = None
    if rank == 0 and cfg.get("logger") == "mlflow":
        from trainctl import tracking
        from trainctl.metrics import MetricsSink

        tracking.current_state(cfg["tracking_uri"], cfg["run_id"])  # as the worker's _attach: mlflow imported
        sink = MetricsSink(cfg["tracking_uri"], cfg["run_id"], run_dir / "spool")
    wd = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", rank, 1, on_stall=lambda w: None)
    timers: dict[str, list[float]] = {}
    prof = _Profile(cfg.get("profile", "") if rank == 0 else "", timers, tmp)
    fitting: dict[str, Fit] = {}

    def started(f: Fit) -> None:
        fitting["fit"] = f
        if cfg.get("logger") == "none":
            f.trainer.loggers = []
        prof.install(f)

    t_fit = time.perf_counter()
    done = fit(spec, run_dir, cfg.get("run_id", "bench"), sink, rank, world, watchdog=wd.start(), started=started)
    fit_s = time.perf_counter() - t_fit
    prof.dump()
    t_td = time.perf_counter()
    done.built.checkpoint_io.teardown()
    teardown_s = time.perf_counter() - t_td
    wd.stop()
    if sink is not None:
        sink.close(timeout_s=60)
    if rank == 0:
        extra_out: dict[str, Any] = {"timers": timers, "fit_s": fit_s, "teardown_s": teardown_s,
                                     "io_blocked_s": list(done.built.checkpoint_io.blocked_s)}
        if sink is not None:
            extra_out["sink"] = {"delivered": sink.delivered, "failures": sink.failures}
        if prof.mode == "hooks":
            durations = done.trainer.profiler.recorded_durations
            steps = len(prof.clock.ends)
            extra_out["hooks_ms_per_step"] = {a: 1e3 * sum(d) / steps for a, d in
                                              sorted(durations.items(), key=lambda kv: -sum(kv[1]))
                                              if len(d) >= steps // 2}
        (tmp / "extra.json").write_text(json.dumps(extra_out))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: see bench.procs.run_json (a gloo destructor can deadlock)


class _Profile:
    """Timers around the loop's checkpoint wait (always) and the agreed stop's parts ("parts"); rank 0 under
    cProfile after the warm-up epoch ("cprofile")."""

    def __init__(self, mode: str, timers: dict[str, list[float]], folder: Path) -> None:
        self.mode, self.timers, self.folder = mode, timers, folder
        self.prof: Any = None
        self.clock: Any = None

    def _timed(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.timers.setdefault(label, []).append(time.perf_counter() - t0)

        setattr(obj, name, wrapper)

    def install(self, f: Any) -> None:
        self._timed(f.built.resume, "save", "checkpoint_save")  # the loop's whole wait per resume checkpoint
        self.clock = next(c for c in f.trainer.callbacks if isinstance(c, StepEnds))
        if self.mode == "parts":
            from trainctl.callbacks import preemption

            agreed = next(c for c in f.trainer.callbacks if isinstance(c, preemption.AgreedStopImpl))
            self._timed(agreed, "_launch", "agreed._launch")
            self._timed(agreed, "_collect", "agreed._collect")
        if self.mode == "cprofile":
            import cProfile

            self.prof = cProfile.Profile()
            clock, prof, orig_epoch_end = self.clock, self.prof, self.clock.on_train_epoch_end

            def epoch_end(tr: Any, pm: Any) -> None:
                orig_epoch_end(tr, pm)
                if len(clock.epoch_ends) == 1:
                    prof.enable()

            clock.on_train_epoch_end = epoch_end

    def dump(self) -> None:
        if self.prof is not None:
            self.prof.disable()
            self.prof.dump_stats(str(self.folder / "rank0.prof"))


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
    """`python -m bench.worker_path '<cfg json>'`: run_worker in a fresh interpreter; prints one JSON line."""
    import importlib

    cfg = json.loads((argv or sys.argv[1:])[0])
    import trainctl.worker.entrypoint  # noqa: F401  (what a rank imports before it trains)

    # Through the importable module, not __main__: the ranks unpickle _worker_rank by its module's name.
    out = importlib.import_module("bench.worker_path").run_worker(cfg)
    if not cfg.get("keep_ends"):
        out.pop("ends", None)
    print(json.dumps(out), flush=True)
    return 0


def worker(cfg: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    return run_json(["-m", "bench.worker_path", json.dumps(cfg)], timeout=timeout)


if __name__ == "__main__":
    sys.exit(worker_cli())
