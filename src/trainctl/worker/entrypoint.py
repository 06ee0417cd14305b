"""The worker: what every rank runs, on every backend.

Each backend's entry function calls it with the backend's in-job side (trainctl.injob.InJob): `run_rank` for
submitit's ranks (local and SLURM: launchers/<backend>/injob.py), `train` directly from Ray Train's train function
(launchers/ray/worker.py). `train` reads in one screen: build the user's objects, attach to the job's MLflow run,
resume from the newest good checkpoint, fit, test, and reach a verdict.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trainctl import tracking
from trainctl.callbacks.checkpoint_io import manifest_path
from trainctl.callbacks.preemption import RequeueRequested
from trainctl.callbacks.resume_checkpoint import latest_good
from trainctl.injob import STOP, InJob, RankInfo, short_mlflow_requests
from trainctl.logview import attempt_mark
from trainctl.metrics import MetricsSink, logged_high_water
from trainctl.rundir import JobFile, use_import_dirs
from trainctl.runstate import Cause, Outcome, State, Verdict, state_after
from trainctl.spec import Spec, spec_from_dict
from trainctl.worker import attempt as attempts
from trainctl.worker import quiet, system_metrics
from trainctl.worker.env import export_from_submitit
from trainctl.worker.fit import Fit, fit
from trainctl.worker.loader_workers import fork_server_now, worker_imports
from trainctl.worker.outcome import Ending, classify
from trainctl.worker.watchdog import Watchdog

log = logging.getLogger("trainctl.worker")


def run_rank(run_dir: str, injob: InJob) -> str:
    """A submitit rank (local executor or SLURM), called by its backend's callable with the backend's in-job side."""
    STOP.install()  # replaces submitit's USR2/TERM handlers: trainctl alone owns preemption
    job = JobFile.read(Path(run_dir))
    use_import_dirs(job.import_dirs)
    rank = export_from_submitit(job.master_port)
    verdict = train(Path(run_dir), job, rank, injob)
    reason = act_on(verdict, job, rank, injob)
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


# A peer that recorded a failure this long ago while this rank still waits (on a rendezvous or a collective that
# would only time out after collective_timeout_s) ends this rank with the peer's verdict.
PEER_GRACE_S = 10.0


@dataclass
class _Live:
    """One rank's attempt while it runs: what ending it needs, from the main thread or the watchdog's."""

    run_dir: Path
    job: JobFile
    rank: RankInfo
    injob: InJob
    attempt: Any
    spec: Spec
    sink: MetricsSink | None = None
    built: Any = None
    unrecorded_tags: dict[str, str] = field(default_factory=dict)  # the attempt's tags, when MLflow was away
    ending_claimed: threading.Lock = field(default_factory=threading.Lock)


def train(run_dir: Path, job: JobFile, rank: RankInfo, injob: InJob, strategy: Any = None) -> Verdict:
    short_mlflow_requests()
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank.global_rank}] %(levelname)s %(name)s: %(message)s")
    spec: Spec = spec_from_dict(job.spec)
    zero = rank.global_rank == 0
    attempt = attempts.begin(run_dir, rank)
    attempts.mark_rank(run_dir, attempt, rank, "start")
    ckpt_path, skipped = latest_good(run_dir)
    _mark_attempt(attempt, ckpt_path)
    quiet.install()
    # Before any other Python thread runs: loader workers are forked from that quiet copy, with the user's modules
    fork_server_now(worker_imports((spec.model.class_path, spec.data.class_path if spec.data else None)))
    live = _Live(run_dir, job, rank, injob, attempt, spec)
    ending, step = Ending(Cause.user_error, "the attempt ended before training"), None
    trainer = None
    if zero:  # before the watchdog: importing MLflow's client may take long on a busy node; it never raises
        live.sink = _attach(live, skipped, resumed=bool(ckpt_path) or attempt.number > 1)
    monitor = system_metrics.start(spec.tracking.system_metrics, job, rank, run_dir)  # local rank 0: system/<host>/
    watchdog = Watchdog(spec.fault_tolerance.collective_timeout_s, run_dir / "failures", rank.global_rank,
                        attempt.number, on_stall=lambda why: _end_early(live, Ending(Cause.stall, why)),
                        peer_failed=lambda: attempts.peer_failure(run_dir, attempt, rank, PEER_GRACE_S),
                        on_peer_failure=lambda peer: _end_early(live, peer)).start()

    def started(f: Fit) -> None:
        nonlocal trainer
        trainer, live.built = f.trainer, f.built

    try:
        fit(spec, run_dir, job.run_id, live.sink, rank.global_rank, rank.world_size, watchdog=watchdog,
            ckpt_path=ckpt_path, strategy=strategy, started=started)
        ending, step = Ending(Cause.finished), trainer.global_step
    except RequeueRequested as stop:
        ending, step = Ending(stop.cause, f"stopped at step {stop.step}"), stop.step
    except KeyboardInterrupt:
        ending = Ending(Cause.killed, "interrupted (SIGINT)")
    except Exception as exc:  # the policy decides by whose fault it is: the user's code or the infrastructure
        ending = classify(exc)
        log.error("training failed on rank %d (%s):\n%s", rank.global_rank, ending.cause.value,
                  traceback.format_exc())
        if STOP.requested:  # a preempted rank whose peer died: still a preemption
            ending = Ending(STOP.cause, ending.detail)
        attempts.mark_rank(run_dir, attempt, rank, "end", ending=ending)  # now: the peers look for whose it is
    finally:
        watchdog.stop()
        built = live.built
        if built is not None and built.step_metrics is not None:
            with contextlib.suppress(Exception):
                built.step_metrics.drain(block=True)  # the last steps' metrics, even on a stop or a crash
        if built is not None:
            built.checkpoint_io.teardown()  # every pending checkpoint is on disk before we go
        monitor.stop()  # a last sample; what MLflow does not take within seconds is spooled
    step = step if step is not None else (trainer.global_step if trainer is not None else None)
    if ending.cause.stop:  # the stop signal may be a cancel's: a cancelled job ends here, never requeued
        why = injob.cancelled(job)
        if why:
            ending = Ending(Cause.killed, f"{why}; {ending.detail or 'stopped'}")
    attempts.mark_rank(run_dir, attempt, rank, "end", ending=ending)
    if not live.ending_claimed.acquire(blocking=False):
        threading.Event().wait()  # the watchdog's thread is ending this attempt and the process
    verdict = attempts.decide(run_dir, attempt, spec.fault_tolerance,
                              attempts.attempt_ending(run_dir, attempt, rank, ending))
    if zero:
        attempts.end(run_dir, attempt, verdict, step)
        _close_run(live, verdict)
    return verdict


def _mark_attempt(attempt: Any, ckpt_path: Path | None) -> None:
    """The attempt's first line in both of this rank's streams: it splits the rank's log by attempt (logview) and
    is the banner a follower shows."""
    step = None
    if ckpt_path is not None:
        with contextlib.suppress(OSError, ValueError):
            step = json.loads(manifest_path(ckpt_path).read_text()).get("global_step")
    line = attempt_mark(attempt.number, attempt.cause, step)
    for stream in (sys.stdout, sys.stderr):
        print(line, file=stream, flush=True)


def _end_early(live: _Live, ending: Ending) -> None:
    """Watchdog thread: this rank is stuck, or a peer failed while this rank waits on it. Record the verdict
    (global rank 0: the attempt, its artifacts and the run's state) and leave, so that no rank waits out a
    timeout for a peer that is gone."""
    if not live.ending_claimed.acquire(blocking=False):
        return  # the main thread reached the end first
    run_dir, rank, attempt = live.run_dir, live.rank, live.attempt
    try:  # whatever happens here, the process leaves: the main thread waits for it
        failed: dict[str, str] = {}
        if ending.cause is Cause.stall:
            log.error("%s; stacks saved under %s", ending.detail, run_dir / "failures")
            attempts.mark_rank(run_dir, attempt, rank, "end", ending=ending)
            stuck, host, ending = attempts.stall_origin(run_dir, attempt, rank, ending)
            failed = {"trainctl.failed_rank": str(stuck), "trainctl.failed_host": host}
        else:  # no end record of its own: the peer's record is the attempt's cause
            log.error("ending this rank: %s", ending.detail)
        verdict = attempts.decide(run_dir, attempt, live.spec.fault_tolerance, ending)
        if rank.global_rank == 0:
            attempts.end(run_dir, attempt, verdict, None)
            _close_run(live, verdict, **failed)
        act_on(verdict, live.job, rank, live.injob)
    finally:
        os._exit(1)


def _attach(live: _Live, skipped: list[tuple[Path, str]], resumed: bool) -> MetricsSink:
    """Attach the attempt to the job's run. An unreachable server does not stop training: the tags are
    recorded with the verdict, and the sink delivers the metrics once it answers (or spools them)."""
    job, run_dir, rank, attempt = live.job, live.run_dir, live.rank, live.attempt
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
    try:
        tracking.set_state(job.tracking_uri, job.run_id, State.RUNNING, unless=tracking.cancelled, **tags)
    except Exception as exc:
        live.unrecorded_tags = tags
        log.warning("MLflow unreachable at the attempt's start (%s: %s); training on, metrics are buffered and "
                    "spooled to %s if it stays away", type(exc).__name__, exc, run_dir / "spool")
    uri, run_id = job.tracking_uri, job.run_id
    # A restart replays steps MLflow may hold already: the sink asks which once the server answers.
    return MetricsSink(uri, run_id, run_dir / "spool",
                       high_water=(lambda: logged_high_water(uri, run_id)) if resumed else None)


def _close_run(live: _Live, verdict: Verdict, **tags: str) -> None:
    """Every ending (finished, requeued, failed, killed) uploads the logs and the newest good checkpoint."""
    job, run_dir = live.job, live.run_dir
    if live.sink is not None:  # while the server is away, spool soon: `trainctl sync` uploads the rest
        live.sink.close(timeout_s=5.0 if live.sink.failing else 30.0)
    uri, run_id = job.tracking_uri, job.run_id
    uploads = [(p, "logs") for p in sorted((run_dir / "logs").glob("*_log.*"))]
    try:  # artifacts are best effort; the verdict below is not
        if _spec_flag(job, "log_checkpoints"):
            # Before the Trainer exists (or when it never did) the newest good checkpoint is still mirrored.
            built = live.built or SimpleNamespace(save_last=live.spec.checkpoint.save_last, top_k=None)
            uploads += _checkpoints_to_mirror(run_dir, built)
        cl = tracking.client(uri)
        # One request per file: side by side, so that the job's end is not the sum of their round trips.
        with concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="trainctl-upload") as pool:
            for done in [pool.submit(cl.log_artifact, run_id, str(path), where) for path, where in uploads]:
                done.result()
    except Exception as exc:
        log.warning("could not upload checkpoints/logs to MLflow: %s", exc)
    if verdict.outcome is Outcome.finished:  # after the upload: the version's source is checkpoints/best
        from trainctl import model_registry

        model_registry.on_finished(live.spec, uri, run_id, live.built.top_k if live.built else None)
    state = state_after(verdict.outcome)
    try:  # a requeued attempt's successor records its own state: it need not wait out a long outage
        tracking.set_state(uri, run_id, state, reason=verdict.reason, unless=tracking.cancelled,
                           retry_s=10.0 if state is State.REQUEUED else 180.0, **live.unrecorded_tags,
                           **(live.built.tags if live.built else {}), **tags)
    except Exception:  # tracking down for good: the verdict is in attempts/, `trainctl status` reconciles
        log.exception("could not record the verdict in MLflow")


def _spec_flag(job: JobFile, name: str) -> bool:
    return bool(job.spec.get("tracking", {}).get(name, True))


def _checkpoints_to_mirror(run_dir: Path, built: Any) -> list[tuple[Path, str]]:
    """Best and last checkpoints (with manifests), and where they go in the run's artifacts (checkpoints/).

    MLflow artifacts only accumulate (nothing deletes one), so each goes up under a fixed name, `last.ckpt` and
    `best.ckpt`, which every attempt overwrites: checkpoints/last holds the newest checkpoint only. The step is in
    the manifest beside it. The fixed names are hard links (or copies) staged in checkpoints/mirror/.
    """
    from trainctl.callbacks.checkpoint_io import manifest_path, stage_as

    files: list[tuple[Path, str]] = []
    staging = run_dir / "checkpoints" / "mirror"
    ckpt, _ = latest_good(run_dir)
    if ckpt is not None and built.save_last:
        files += [(p, "checkpoints/last") for p in stage_as(ckpt, staging / "last.ckpt")]
    best = getattr(built.top_k, "best_model_path", "") if built.top_k else ""
    if best and Path(best).exists() and manifest_path(best).is_file():  # a file, or a sharded directory
        files += [(p, "checkpoints/best") for p in stage_as(Path(best), staging / "best.ckpt")]
    return files


def act_on(verdict: Verdict, job: JobFile, rank: RankInfo, injob: InJob) -> str:
    """Turn the verdict into the process's end: a backend requeue, a failure, or a normal return."""
    if verdict.outcome is Outcome.requeue:
        injob.requeue_self(rank)  # does not return
    if verdict.outcome in (Outcome.failed, Outcome.killed):
        sys.stderr.write(f"trainctl: attempt ended {verdict.outcome.value}: {verdict.reason}\n")
        sys.stderr.flush()
        os._exit(1)  # no result file: the launcher reads the verdict from the run, not a pickle
    return verdict.reason
