"""The worker: what every rank runs, on every backend.

run_rank (submitit: local and SLURM) and run_in_ray (Ray Train) differ only in how the process group's
environment arrives; both call `train`, which reads in one screen: build the user's objects, attach to the
job's MLflow run, resume from the newest good checkpoint, fit, test, and reach a verdict.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from trainctl import tracking
from trainctl.callbacks.binding import make
from trainctl.callbacks.preemption import RequeueRequested
from trainctl.callbacks.resume_checkpoint import latest_good
from trainctl.components import import_class, instantiate, namespace_of
from trainctl.metrics import MetricsSink, logged_high_water
from trainctl.rundir import JobFile
from trainctl.spec import Spec, resolve_env, spec_from_dict
from trainctl.tracking import State
from trainctl.worker import attempt as attempts
from trainctl.worker.build import build_trainer
from trainctl.worker.data import ResumableData
from trainctl.worker.env import RankInfo, export_from_submitit
from trainctl.worker.loader_workers import fork_server_now
from trainctl.worker.signals import STOP
from trainctl.worker.watchdog import HeartbeatImpl, Watchdog

log = logging.getLogger("trainctl.worker")


# MLflow's client retries one request for up to ~4 minutes; the metrics sink retries by itself, so keep each
# request short and let trainctl's own loops (sink backoff, _with_retries) decide how long to keep trying.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def run_rank(run_dir: str) -> str:
    """submitit's callable on every rank (local executor or SLURM)."""
    STOP.install()  # replaces submitit's USR2/TERM handlers: trainctl alone owns preemption
    job = JobFile.read(Path(run_dir))
    rank = export_from_submitit(job.master_port)
    verdict = train(Path(run_dir), job, rank)
    reason = act_on(verdict, job, rank)
    atexit.register(_exit_now)  # runs first at exit, after submitit has written the result file
    return reason


def _exit_now() -> None:
    """End a finished rank without the interpreter's teardown (torch, gloo, Lightning and MLflow finalizers: 1.5-6 s
    on a 2-core machine), so that the launcher and `trainctl submit` see the job end at once. The run is closed
    and submitit's result file written by then; an exception on the way out keeps the normal exit (and status)."""
    if getattr(sys, "last_value", None) is not None:
        return
    import multiprocessing.util

    with contextlib.suppress(Exception):
        multiprocessing.util._exit_function()  # what multiprocessing's own atexit does: stop daemonic children
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train(run_dir: Path, job: JobFile, rank: RankInfo, strategy: Any = None) -> attempts.Verdict:
    fork_server_now()  # before any other Python thread runs: loader workers are forked from that quiet copy
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank.global_rank}] %(levelname)s %(name)s: %(message)s")
    spec: Spec = spec_from_dict(job.spec)
    zero = rank.global_rank == 0
    attempt = attempts.begin(run_dir, rank)
    attempts.mark_rank(run_dir, attempt, rank, "start")
    ckpt_path, skipped = latest_good(run_dir)
    sink = None
    if zero:
        _attach(job, rank, attempt, skipped)
        sink = MetricsSink(job.tracking_uri, job.run_id, run_dir / "spool",
                           high_water=logged_high_water(job.tracking_uri, job.run_id)
                           if ckpt_path or attempt.number > 1 else None)  # a restart from scratch replays too
    kind, detail, step = "crash", "", None
    trainer = built = None
    watchdog = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", rank.global_rank,
                        attempt.number, on_stall=lambda why: _stalled(run_dir, job, rank, attempt, spec, why)).start()
    try:
        ns = namespace_of(import_class(spec.model.class_path))
        if spec.seed_everything is not None:
            ns.pl.seed_everything(spec.seed_everything, workers=True, verbose=False)
        model = instantiate(resolve_env(spec.model), ns.pl.LightningModule)
        data = instantiate(resolve_env(spec.data), ns.pl.LightningDataModule) if spec.data else None
        trainer, built = build_trainer(ns, spec, run_dir, job.run_id, sink, strategy=strategy,
                                       extra_callbacks=(make(HeartbeatImpl, ns.pl.Callback, watchdog),))
        data_path = ResumableData(ns, trainer, spec.seed_everything or 0, rank.global_rank, rank.world_size)
        data_path.install(data if data is not None else model)
        trainer.fit(model, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        if _has_test(ns, model, data):
            best = built.top_k.best_model_path if built.top_k else ""
            trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)
        kind, step = "finished", trainer.global_step
    except RequeueRequested as stop:
        kind, detail, step = f"stop:{stop.cause}", f"stopped at step {stop.step}", stop.step
    except KeyboardInterrupt:
        kind, detail = "killed", "interrupted (SIGINT)"
    except Exception as exc:  # the user's code failed: the run records it, the policy decides
        kind, detail = "crash", f"{type(exc).__name__}: {exc}"
        log.error("training failed on rank %d:\n%s", rank.global_rank, traceback.format_exc())
        if STOP.requested:  # a preempted rank whose peer died: still a preemption
            kind = f"stop:{STOP.cause}"
    finally:
        watchdog.stop()
        if built is not None and built.step_metrics is not None:
            with contextlib.suppress(Exception):
                built.step_metrics.drain(block=True)  # the last steps' metrics, even on a stop or a crash
        if built is not None:
            built.checkpoint_io.teardown()  # every pending checkpoint is on disk before we go
    step = step if step is not None else (trainer.global_step if trainer is not None else None)
    attempts.mark_rank(run_dir, attempt, rank, "end", f"{kind} {detail}")
    if zero and kind == "crash":
        silent = attempts.silent_ranks(run_dir, attempt, rank.world_size)
        if silent:  # a peer vanished (SIGKILL, OOM, node loss): name it, it is the cause
            detail = f"{', '.join(silent)} died without reporting; here: {detail}"
    verdict = attempts.decide(run_dir, attempt, spec.fault_tolerance, kind, detail)
    if zero:
        attempts.end(run_dir, attempt, verdict, step)
        _close_run(job, run_dir, verdict, sink, trainer, built)
    return verdict


def _stalled(run_dir: Path, job: JobFile, rank: RankInfo, attempt: Any, spec: Spec, why: str) -> None:
    """Watchdog thread: this rank is stuck. Its stacks are saved; leave so that the peers fail fast."""
    log.error("%s; stacks saved under %s", why, run_dir / "failures")
    verdict = attempts.decide(run_dir, attempt, spec.fault_tolerance, "crash", why)
    if rank.global_rank == 0:
        attempts.end(run_dir, attempt, verdict, None)
        state = State.REQUEUED if verdict.outcome is attempts.Outcome.requeue else State.FAILED
        failed = {"trainctl.failed_rank": str(rank.global_rank), "trainctl.failed_host": rank.host}
        with contextlib.suppress(Exception):
            tracking.set_state(job.tracking_uri, job.run_id, state, reason=verdict.reason, **failed)
    act_on(verdict, job, rank)
    os._exit(1)


def _attach(job: JobFile, rank: RankInfo, attempt: Any, skipped: list[tuple[Path, str]]) -> None:
    tags = {
        "trainctl.attempt": str(attempt.number),
        f"trainctl.attempt.{attempt.number}.cause": attempt.cause,
        f"trainctl.attempt.{attempt.number}.scheduler_job_id": attempt.scheduler_job_id,
        "trainctl.hosts": os.environ.get("SLURM_JOB_NODELIST", rank.host),
        "trainctl.world_size": str(rank.world_size),
        "trainctl.scheduler_job_id": rank.scheduler_job_id,
    }
    if skipped:
        tags["trainctl.skipped_checkpoints"] = "; ".join(f"{p.name}: {why}" for p, why in skipped)[:4000]
        for p, why in skipped:
            log.warning("skipping checkpoint %s: %s", p, why)
    current = tracking.current_state(job.tracking_uri, job.run_id)
    if current is not State.KILLED:
        tracking.set_state(job.tracking_uri, job.run_id, State.RUNNING, **tags)


def _close_run(job: JobFile, run_dir: Path, verdict: attempts.Verdict, sink: MetricsSink | None,
               trainer: Any, built: Any) -> None:
    if sink is not None:
        sink.close(timeout_s=30.0)
    uri, run_id = job.tracking_uri, job.run_id
    uploads = [(p, "logs") for p in sorted((run_dir / "logs").glob("*_log.*"))]
    try:  # artifacts are best effort; the verdict below is not
        if built is not None and _spec_flag(job, "log_checkpoints"):
            uploads += _checkpoints_to_mirror(run_dir, built)
        cl = tracking.client(uri)
        # One request per file: side by side, so that the job's end is not the sum of their round trips.
        with concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="trainctl-upload") as pool:
            for done in [pool.submit(cl.log_artifact, run_id, str(path), where) for path, where in uploads]:
                done.result()
    except Exception as exc:
        log.warning("could not upload checkpoints/logs to MLflow: %s", exc)
    state = {
        attempts.Outcome.finished: State.FINISHED, attempts.Outcome.requeue: State.REQUEUED,
        attempts.Outcome.failed: State.FAILED, attempts.Outcome.killed: State.KILLED,
    }[verdict.outcome]

    def record() -> None:
        if tracking.current_state(uri, run_id) is not State.KILLED:  # a user's cancel wins
            tracking.set_state(uri, run_id, state, reason=verdict.reason)

    try:
        _with_retries(record)
    except Exception:  # tracking down for good: the verdict is in attempts/, `trainctl status` reconciles
        log.exception("could not record the verdict in MLflow")


def _with_retries(action: Any, total_s: float = 180.0) -> None:
    """The verdict must reach MLflow: retry through an outage of up to `total_s`."""
    deadline = time.monotonic() + total_s
    delay = 1.0
    while True:
        try:
            action()
            return
        except Exception:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("MLflow unreachable while recording the verdict; retrying in %.0f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def _spec_flag(job: JobFile, name: str) -> bool:
    return bool(job.spec.get("tracking", {}).get(name, True))


def _checkpoints_to_mirror(run_dir: Path, built: Any) -> list[tuple[Path, str]]:
    """Best and last checkpoints (with manifests), and where they go in the run's artifacts (checkpoints/)."""
    files: list[tuple[Path, str]] = []
    ckpt, _ = latest_good(run_dir)
    if ckpt is not None and built.save_last:
        files += [(p, "checkpoints/last") for p in (ckpt, Path(f"{ckpt}.manifest.json"))]
    best = getattr(built.top_k, "best_model_path", "") if built.top_k else ""
    if best and Path(best).is_file():
        files += [(p, "checkpoints/best") for p in (Path(best), Path(f"{best}.manifest.json")) if p.is_file()]
    return files


def _has_test(ns: Any, model: Any, data: Any) -> bool:
    from lightning_utilities.core.overrides import is_overridden

    has_loader = (data is not None and is_overridden("test_dataloader", data, ns.pl.LightningDataModule)) or \
        is_overridden("test_dataloader", model, ns.pl.LightningModule)
    return has_loader and is_overridden("test_step", model, ns.pl.LightningModule)


def act_on(verdict: attempts.Verdict, job: JobFile, rank: RankInfo) -> str:
    """Turn the verdict into the process's end: a backend requeue, a failure, or a normal return."""
    if verdict.outcome is attempts.Outcome.requeue:
        from trainctl.launchers import registry

        registry.load(job.backend).requeue_self(rank)  # does not return
    if verdict.outcome in (attempts.Outcome.failed, attempts.Outcome.killed):
        sys.stderr.write(f"trainctl: attempt ended {verdict.outcome.value}: {verdict.reason}\n")
        sys.stderr.flush()
        os._exit(1)  # no result file: the launcher reads the verdict from the run, not a pickle
    return verdict.reason
