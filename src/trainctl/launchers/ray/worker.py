"""What each Ray Train worker of a trainctl job runs (the driver, driver.py, starts them).

Each worker runs the one trainctl worker, `entrypoint.train`, with
- its rank from Ray Train's context (Ray exports RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/PORT and has already
  created the process group: TorchConfig(init_method="env"));
- a DDPStrategy of the *user's* Lightning namespace (pytorch_lightning or lightning.pytorch) whose cluster
  environment reads Ray's context, the equivalent of Ray's RayDDPStrategy + RayLightningEnvironment, which
  exist in one namespace only;
- trainctl's checkpoints in the run directory: a restarted group resumes from `latest_good(run_dir)`, like a
  requeued SLURM job. Nothing is reported to Ray Train per epoch: Ray's RayTrainReportCallback writes and
  reports a checkpoint every epoch, a cost (and a second copy) trainctl does not need. The switch
  TRAINCTL_RAY_REPORT_EVERY_EPOCH=1 puts that cost back, for bench/ray_overhead.py.
A verdict of "requeue" is raised (injob.py RayInJob.requeue_self): Ray Train restarts the group. "failed" and
"killed" return normally, so that Ray does not retry; the driver then ends the job with the run's state.

Signals: Ray runs the train function in a thread, where no handler can be installed, and a Ray worker's main
thread turns SIGTERM into an exit. `setup_worker_process` (runtime_env worker_process_setup_hook, run in the
worker's main thread) installs trainctl's flag-setting SIGUSR2 handler, so a warning signal leads to the
agreed stop: every rank checkpoints the same step and the group is restarted from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from trainctl import tracking
from trainctl.injob import STOP, WARNING_SIGNAL, RankInfo
from trainctl.rundir import JobFile, use_import_dirs
from trainctl.runstate import CAUSE_FILE, Attempts, Outcome, State, await_attempt
from trainctl.spec import Spec, spec_from_dict

log = logging.getLogger("trainctl.ray_worker")


def setup_worker_process() -> None:
    """runtime_env worker_process_setup_hook: runs in the main thread of every worker process of the job.

    Only SIGUSR2: Ray's main loop installs its own SIGTERM handler after this hook (SIGTERM ends a Ray worker;
    Ray's preemption path is node draining, not signals). Keep this module's imports light: the hook runs in
    every process of the job (Ray Train's controller and helper actors too), and importing torch here, before
    Ray sets OMP_NUM_THREADS for the actor, would size torch's OpenMP pool to every core of the node.
    """
    signal.signal(WARNING_SIGNAL, STOP.handler)


def _context() -> Any:
    import ray.train

    return ray.train.get_context()


class RayEnvironmentImpl:
    """Lightning cluster environment (bound to LightningEnvironment of the user's namespace): ranks from Ray."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def world_size(self) -> int:
        return _context().get_world_size()

    def global_rank(self) -> int:
        return _context().get_world_rank()

    def local_rank(self) -> int:
        return _context().get_local_rank()

    def node_rank(self) -> int:
        return _context().get_node_rank()

    def set_world_size(self, size: int) -> None:
        """Ray decides the world size."""

    def set_global_rank(self, rank: int) -> None:
        """Ray decides the ranks."""

    def teardown(self) -> None:
        """Ray owns the process group and the environment variables."""


class RayDDPImpl:
    """DDPStrategy (bound to the user's namespace) on the process group Ray Train created: Ray's device."""

    @property
    def root_device(self) -> Any:
        import ray.train.torch

        return ray.train.torch.get_device()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}  # type: ignore[attr-defined]


def ray_strategy(ns: Any, spec: Spec, world_size: int) -> Any:
    """None for one worker (trainctl's single-device fast path); else DDP over Ray's process group."""
    from trainctl.callbacks.binding import make

    if world_size == 1:
        return None
    env = make(RayEnvironmentImpl, ns.fabric.plugins.environments.LightningEnvironment)
    gpu = spec.resources.accelerator.value == "gpu"
    return make(RayDDPImpl, ns.pl.strategies.DDPStrategy, cluster_environment=env,
                process_group_backend="nccl" if gpu else "gloo",
                timeout=timedelta(seconds=spec.fault_tolerance.collective_timeout_s), gradient_as_bucket_view=True)


class ReportEveryEpochImpl:
    """What Ray's RayTrainReportCallback does at every epoch end: checkpoint to a temp dir, report it to Ray
    Train (which copies it to Ray storage), barrier. Only with TRAINCTL_RAY_REPORT_EVERY_EPOCH=1: trainctl's
    resume needs none of it (bench/ray_overhead.py measures what it costs)."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = Path(tempfile.gettempdir(), f"trainctl-ray-report-{os.getpid()}")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        import shutil

        import ray.train

        tmpdir = self.prefix / str(trainer.current_epoch)
        tmpdir.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v.item()) for k, v in trainer.callback_metrics.items()}
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        path = tmpdir / "checkpoint.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        io = trainer.strategy.checkpoint_io
        if hasattr(io, "wait"):
            io.wait(path)  # trainctl's IO writes in the background; Ray copies the directory now
        ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmpdir)))
        trainer.strategy.barrier()
        shutil.rmtree(tmpdir, ignore_errors=True)


def __getattr__(name: str) -> Any:
    """`ReportEveryEpoch` (pytorch_lightning) / `ReportEveryEpochLightning` (lightning.pytorch), made on demand
    so that importing this module imports neither."""
    if name in ("ReportEveryEpoch", "ReportEveryEpochLightning"):
        from trainctl.callbacks.binding import bind
        from trainctl.components import namespace_named

        ns = namespace_named("pytorch_lightning" if name == "ReportEveryEpoch" else "lightning.pytorch")
        return bind(ReportEveryEpochImpl, ns.pl.Callback)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rank_info(ctx: Any, sid: str) -> RankInfo:
    world, local_world = ctx.get_world_size(), max(1, ctx.get_local_world_size())
    return RankInfo(global_rank=ctx.get_world_rank(), local_rank=ctx.get_local_rank(), world_size=world,
                    node_rank=ctx.get_node_rank(), num_nodes=max(1, -(-world // local_world)), host=_node_name(),
                    scheduler_job_id=sid)


@contextlib.contextmanager
def _quiet_errors() -> Any:
    try:
        yield
    except Exception as exc:  # best effort: a label, a tag
        log.debug("ignored: %r", exc)


def _node_name() -> str:
    """The Ray node's name (local nodes share one hostname); the hostname when Ray has none."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    with _quiet_errors():
        for n in ray.nodes():
            if n.get("NodeID") == node_id and n.get("NodeName"):
                return str(n["NodeName"])
    return socket.gethostname()


class _Tee:
    """Copy this process's fds 1 and 2 into <log dir>/<submission id>_<rank>_log.out|err (what the other backends
    keep per rank, and what `trainctl submit --wait` follows and the run uploads), while Ray still gets them."""

    def __init__(self, log_dir: Path, sid: str, rank: int) -> None:
        self.targets = [(1, log_dir / f"{sid}_{rank}_log.out"), (2, log_dir / f"{sid}_{rank}_log.err")]
        self.saved: list[tuple[int, int]] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> _Tee:
        with _quiet_errors():
            for fd, path in self.targets:
                path.parent.mkdir(parents=True, exist_ok=True)
                out = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by the pump thread
                read, write = os.pipe()
                saved = os.dup(fd)
                (sys.stdout if fd == 1 else sys.stderr).flush()
                os.dup2(write, fd)
                os.close(write)
                self.saved.append((fd, saved))
                t = threading.Thread(target=self._pump, args=(read, saved, out), daemon=True,
                                     name=f"trainctl-tee-{fd}")
                t.start()
                self.threads.append(t)
        return self

    @staticmethod
    def _pump(read: int, original: int, out: Any) -> None:
        try:
            while chunk := os.read(read, 65536):
                with contextlib.suppress(OSError):
                    os.write(original, chunk)
                with contextlib.suppress(OSError, ValueError):
                    out.write(chunk)
        finally:
            os.close(read)
            out.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, saved in self.saved:
            os.dup2(saved, fd)  # the pipe's last writer is gone: its pump reads EOF
            os.close(saved)
        for t in self.threads:
            t.join(timeout=5)


def _gather(rank: RankInfo, run_dir: Path, job: JobFile) -> tuple[list[str], int, str]:
    """Every rank's node name (rank order), and rank 0's view of the run: the number of attempts recorded before
    this one, and why this group must not train (empty: it must)."""
    import torch
    import torch.distributed as dist

    mine = (rank.host, *(_rank_zero_view(run_dir, job) if rank.global_rank == 0 else (-1, "")))
    if not dist.is_available() or not dist.is_initialized() or rank.world_size == 1:
        return [rank.host], mine[1], mine[2]
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())  # all_gather_object stages on the current device
    everyone: list[Any] = [None] * rank.world_size
    dist.all_gather_object(everyone, mine)
    return [e[0] for e in everyone], everyone[0][1], everyone[0][2]


def _rank_zero_view(run_dir: Path, job: JobFile) -> tuple[int, str]:
    """(attempts recorded so far, why not to train). A group must not train when the run already ended: a rank
    whose verdict was "failed" can still leave by exiting (the watchdog's stall path), and Ray counts any dead
    worker as a failure to retry; a cancelled run (KILLED) is not retried either. `trainctl resume` leaves a
    cause marker: then the run goes on."""
    previous = Attempts(run_dir).all()
    why = ""
    last = previous[-1] if previous else None
    if last and last.outcome in (Outcome.failed, Outcome.killed) and not (run_dir / "attempts" / CAUSE_FILE).exists():
        why = f"attempt {last.number} already ended the run {last.outcome.value}: {last.reason}"
    with _quiet_errors():
        if tracking.current_state(job.tracking_uri, job.run_id) is State.KILLED:
            why = "the run is KILLED (cancelled)"
    return len(previous), why


def _await_attempt(run_dir: Path, number: int, wait_s: float = 60.0) -> None:
    """Ranks > 0: wait until rank 0 has recorded attempt `number`, so that attempt.begin() picks this attempt and
    not the still-open record of a group that was killed (its rank 0 never closed it)."""
    await_attempt(run_dir, lambda log: True if any(a.number >= number for a in log) else None, wait_s, every_s=0.05)


def _close_killed_attempt(run_dir: Path) -> None:
    """Rank 0 of a restarted group: the previous group died before its rank 0 recorded a verdict (a worker was
    killed and Ray ended the others). Close that attempt as the requeue it was; the new attempt's cause and the
    restart count are what they would be for an open one (attempt.py)."""
    from trainctl.worker import attempt as attempts

    last = Attempts(run_dir).last()
    if last is not None and last.ended is None:
        folder = attempts.rank_file(run_dir, last, 0, "start").parent
        started = sorted(p.name.split(".")[0] for p in folder.glob("rank-*.start.json"))
        silent = [r for r in started if not (folder / f"{r}.end.json").exists()]
        why = f"{len(silent)} of {len(started)} ranks ended without a verdict"
        attempts.end(run_dir, last, attempts.Verdict(Outcome.requeue, f"killed-without-verdict: {why}; "
                                                        "Ray Train restarted the worker group"), None)


def _rank_zero_verdict(run_dir: Path, number: int, wait_s: float) -> Outcome | None:
    """Rank 0's recorded outcome of attempt `number` (waiting up to wait_s for it), None if there is none."""
    return await_attempt(run_dir, lambda log: next((a.outcome for a in log if a.number == number
                                                    and a.ended is not None), None), wait_s)


def _threads(spec: Spec) -> None:
    """torch's CPU threads on this training thread: the worker's CPU share, as worker/build.py gives a local rank.

    An OpenMP thread count is per thread and fixed when OpenMP starts: Ray's OMP_NUM_THREADS only reaches torch
    if nothing imported torch before Ray set it, and a count of every core per worker (2 workers on 2 cores:
    4 threads spinning at OpenMP barriers) made a digits step 5-20x slower.
    """
    import torch

    from trainctl.launchers.ray.submit import scaling

    if spec.resources.accelerator.value != "gpu":
        cpus = scaling(spec)["resources_per_worker"]["CPU"]
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or cpus)))


def _with_report_every_epoch(job: JobFile, ns: Any) -> JobFile:
    import dataclasses

    name = "ReportEveryEpochLightning" if ns.name == "lightning.pytorch" else "ReportEveryEpoch"
    spec = json.loads(json.dumps(job.spec))
    spec["callbacks"] = [*spec.get("callbacks", []), {"class_path": f"{__name__}.{name}", "init_args": {}}]
    return dataclasses.replace(job, spec=spec)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: the trainctl worker on this rank."""
    from trainctl.components import import_class, namespace_of
    from trainctl.launchers.ray.injob import RayInJob
    from trainctl.launchers.ray.submit import REPORT_EVERY_EPOCH_ENV, SUBMISSION_ENV
    from trainctl.worker.entrypoint import train

    injob = RayInJob()  # here, on the train function's thread
    run_dir = Path(config["run_dir"])
    ctx = _context()
    sid = os.environ.get(SUBMISSION_ENV, "ray")
    rank = _rank_info(ctx, sid)
    tee = _Tee(run_dir / "logs", sid, rank.global_rank).start()
    try:
        import ray

        sys.stderr.write(f"trainctl: rank {rank.global_rank}/{rank.world_size} on node {rank.host} (ray job {sid}, "
                         f"node {ray.get_runtime_context().get_node_id()[:12]}, pid {os.getpid()})\n")
        sys.stderr.flush()
        job = JobFile.read(run_dir)
        use_import_dirs(job.import_dirs)
        nodes, before, skip = _gather(rank, run_dir, job)
        if skip:  # every rank got rank 0's decision: return, so that Ray does not retry; the driver ends the job
            sys.stderr.write(f"trainctl: not training: {skip}\n")
            return
        if rank.global_rank == 0:
            _close_killed_attempt(run_dir)
            with _quiet_errors():
                tracking.client(job.tracking_uri).set_tag(job.run_id, "trainctl.ray.nodes", ",".join(nodes))
        else:
            _await_attempt(run_dir, before + 1)
        spec = spec_from_dict(job.spec)
        _threads(spec)
        ns = namespace_of(import_class(spec.model.class_path))
        if os.environ.get(REPORT_EVERY_EPOCH_ENV) == "1":
            job = _with_report_every_epoch(job, ns)
        verdict = train(run_dir, job, rank, injob, strategy=ray_strategy(ns, spec, rank.world_size))
        if verdict.outcome is not Outcome.requeue:
            if verdict.outcome is not Outcome.finished:  # Ray must not retry: the driver ends the job
                sys.stderr.write(f"trainctl: attempt ended {verdict.outcome.value}: {verdict.reason}\n")
            return
        if rank.global_rank != 0:
            # Rank 0 records the verdict; if it ended the attempt otherwise (or the run was cancelled), stop here.
            outcome = _rank_zero_verdict(run_dir, before + 1, wait_s=30.0)
            if outcome is not None and outcome is not Outcome.requeue:
                return
        with _quiet_errors():
            if tracking.current_state(job.tracking_uri, job.run_id) is State.KILLED:
                return
        injob.requeue_self(rank)
    finally:
        tee.stop()
