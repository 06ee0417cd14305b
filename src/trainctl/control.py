"""What the CLI does, as functions: submit, find a run, reconcile its state, cancel, watch.

A run is addressed by its MLflow run id; its tags point to the run directory, backend and scheduler job id,
so any machine that reaches the tracking store can act on it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainctl import store_read, stores, tracking
from trainctl.errors import UserError
from trainctl.launchers import registry
from trainctl.launchers.base import Launcher, Submission
from trainctl.logview import Follower, Line, show
from trainctl.rundir import JobFile, atomic_write_text, run_dir_for
from trainctl.runstate import Attempt, Attempts, Outcome, State, ended_state, restarts_used, state_of
from trainctl.spec import Spec

log = logging.getLogger("trainctl")

MIN_PREFIX = 6
RUN_ID = re.compile(rf"^[0-9a-f]{{{MIN_PREFIX},32}}$")


@dataclass
class RunRef:
    run_id: str
    uri: str
    run_dir: Path
    backend: str
    scheduler_job_id: str
    state: State
    name: str
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int | None = None  # ms since the epoch (MLflow's)
    end_time: int | None = None
    metric_steps: dict[str, int] = dataclasses.field(default_factory=dict)  # the step of each latest metric


def resolve_uri(spec: Spec) -> str:
    return spec.tracking.uri or tracking.default_tracking_uri(spec.workdir)


def submit(spec: Spec, dry_run: bool = False, source: str | None = None, import_dirs: list[str] | None = None
           ) -> tuple[RunRef | None, str]:
    """Validate-done spec → (run, text). A dry run writes nothing and returns the exact request.

    source: the spec file, the run's `mlflow.source.name`. import_dirs: where the spec's classes were importable
    here (rundir.import_dirs_for); every rank puts them on its sys.path first.
    """
    uri = resolve_uri(spec)
    spec = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, uri=uri))
    launcher = registry.load(spec.backend.kind.value).LAUNCHER
    if dry_run:
        return None, launcher.dry_run(spec, run_dir_for(spec.workdir, spec.name, "<run-id>"))
    from trainctl import mlflow_server

    started = mlflow_server.serve_if_missing(uri, Path(spec.workdir))
    if started:
        log.warning("%s", started)
    tracking.wait_for_server(uri, timeout_s=60.0 if started else 30.0)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    job, run_dir = create_job(spec, uri, launcher, source, import_dirs or [])
    sub = launch(spec, run_dir, job)
    return find_run(job.run_id, uri), sub.detail


def create_job(spec: Spec, uri: str, launcher: Launcher, source: str | None, import_dirs: list[str]
               ) -> tuple[JobFile, Path]:
    """A new run and its directory, ready to launch: the MLflow run (PENDING), job.json, spec.yaml (also the run's
    artifact) and the tag that points to the directory. `submit` and a forking `resume` both start here."""
    import yaml

    run_id = tracking.create_run(spec, uri, launcher.kind, source=source)
    stores.remember(uri)
    run_dir = run_dir_for(spec.workdir, spec.name, run_id)
    spec_dict = spec.to_dict()
    job = JobFile(run_id=run_id, tracking_uri=uri, backend=launcher.kind, spec=spec_dict,
                  master_port=launcher.rendezvous_port(), import_dirs=list(import_dirs))
    job.write(run_dir)
    redacted = tracking.redact_spec(spec_dict, spec.tracking.redact)
    atomic_write_text(run_dir / "spec.yaml", yaml.safe_dump(redacted, sort_keys=False))
    cl = tracking.client(uri)
    cl.log_artifact(run_id, str(run_dir / "spec.yaml"))
    cl.set_tag(run_id, "trainctl.run_dir", str(run_dir))
    return job, run_dir


def launch(spec: Spec, run_dir: Path, job: JobFile) -> Submission:
    """Hand a written job to its backend; a refusal ends the run FAILED (it must not stay PENDING)."""
    launcher = registry.load(job.backend).LAUNCHER
    try:
        sub = launcher.submit(spec, run_dir, job)
    except UserError as err:
        tracking.set_state(job.tracking_uri, job.run_id, State.FAILED, reason=f"submit failed: {err}")
        raise
    except Exception as exc:
        tracking.set_state(job.tracking_uri, job.run_id, State.FAILED,
                           reason=f"submit failed: {type(exc).__name__}: {exc}")
        raise UserError.single("backend", f"{launcher.kind} refused the job: {exc}",
                               "check the backend's options and that its cluster is up") from None
    tracking.client(job.tracking_uri).set_tag(job.run_id, "trainctl.scheduler_job_id", sub.scheduler_job_id)
    return sub


def find_run(run_id: str, uri: str | None) -> RunRef:
    """The run with this id (or unique prefix of ≥ 6 characters) in `uri`; with no uri, in the store of the
    current directory's `runs/`, then in every store this user submitted to (trainctl.stores)."""
    wanted = run_id.strip().lower()
    if not RUN_ID.match(wanted):
        short = len(wanted) < MIN_PREFIX and wanted.isalnum()
        raise UserError.single("RUN_ID", f"{run_id!r} is too short: a run id prefix needs at least {MIN_PREFIX} "
                               "characters" if short else f"{run_id!r} is not a run id (32 hex digits)",
                               "give the run id `submit` printed, or its first 6+ characters; `trainctl ls` "
                               "lists them")
    if uri is not None and not stores.exists(uri):
        raise UserError.single("RUN_ID", f"no run {run_id!r} in {uri}: no tracking store there (none was created)",
                               "pass the --tracking-uri the run was submitted with, or drop it to search every "
                               "store you submitted to")
    if uri is not None and not stores.reachable(uri, stores.NAMED_PROBE_S):
        raise stores.not_answering([uri], named=True)
    searched, silent = ([uri], []) if uri is not None else stores.search_plan()
    found: list[tuple[str, str]] = []
    problems: list[str] = []
    for store in searched:
        try:
            found += [(store, rid) for rid in store_read.matching_ids(store, wanted)]
        except store_read.StoreUnreachable:
            if uri is not None:
                raise stores.not_answering([uri], named=True) from None
            silent.append(store)
        except Exception as exc:  # one unreadable store must not hide the others
            problems.append(f"{store}: {type(exc).__name__}")
        if found and len(wanted) == 32:
            break
    if len(found) > 1:
        listed = ", ".join(rid for _, rid in found[:5])
        raise UserError.single("RUN_ID", f"{run_id!r} matches {len(found)} runs: {listed}",
                               "give more characters of the run id")
    if not found and silent:
        answered = [s for s in searched if s not in silent]
        lead = f"no run {run_id!r} in {', '.join(answered)}; " if answered else ""
        raise stores.not_answering(silent, named=False, lead=lead)
    if not found:
        where = (f"in {', '.join(searched)}" if searched else
                 f"anywhere: no tracking store in ./runs nor in the index of stores used ({stores.index_path()})")
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise UserError.single("RUN_ID", f"no run {run_id!r} {where}{detail}",
                               "list runs with `trainctl ls`, or pass --tracking-uri / set MLFLOW_TRACKING_URI")
    store, rid = found[0]
    rec = store_read.get_run(store, rid)
    if rec is None or "trainctl.backend" not in rec.tags:
        raise UserError.single("RUN_ID", f"run {rid} was not created by trainctl", "list runs with `trainctl ls`")
    return ref_of(store, rec)


def ref_of(uri: str, rec: store_read.RunRecord) -> RunRef:
    tags = rec.tags
    return RunRef(rec.run_id, uri, Path(tags.get("trainctl.run_dir", "")), tags["trainctl.backend"],
                  tags.get("trainctl.scheduler_job_id", ""), state_of(tags, rec.status),
                  tags.get("mlflow.runName", ""), dict(rec.metrics), dict(tags), rec.start_time, rec.end_time,
                  dict(rec.metric_steps))


def reconcile(ref: RunRef) -> RunRef:
    """A run the scheduler no longer runs cannot stay RUNNING: end it from its attempt log."""
    if ref.state.terminal or not ref.scheduler_job_id:
        return ref
    launcher = registry.load(ref.backend).LAUNCHER
    seen = launcher.status(ref.run_dir, ref.scheduler_job_id)
    if seen is not None and not seen.terminal:
        return ref
    last = Attempts(ref.run_dir).last() if ref.run_dir.is_dir() else None
    state, reason = ended_state(seen, last)
    if seen is State.KILLED:
        close_last_attempt(ref.run_dir, reason)
    tracking.set_state(ref.uri, ref.run_id, state, reason=reason)
    return find_run(ref.run_id, ref.uri)


CANCEL_GRACE_S = 60.0  # how long the ranks get to save their current step and end before harder signals


@dataclass
class Cancelled:
    """What `cancel` did (in order), what of the job is still there (empty: nothing), and the last attempt."""

    run_id: str
    done: list[str]
    left: list[str]
    attempt: Attempt | None


def cancel(ref: RunRef, grace_s: float = CANCEL_GRACE_S, say: Callable[[str], Any] = log.info) -> Cancelled:
    """Mark KILLED first (so no attempt requeues or overwrites it), then end the job through its launcher: the
    ranks' stop path, then harder signals. Once nothing of the job is left, its last attempt is closed killed."""
    if ref.state.terminal:
        raise UserError.single("RUN_ID", f"run {ref.run_id} already ended {ref.state.value}", "nothing to cancel")
    tracking.set_state(ref.uri, ref.run_id, State.KILLED, reason="cancelled by the user")
    say(f"run {ref.run_id} is KILLED in MLflow: no attempt of it requeues; ending its {ref.backend} job")
    report = registry.load(ref.backend).LAUNCHER.cancel(ref.run_dir, ref.scheduler_job_id, grace_s, say)
    attempt = None if report.left else close_last_attempt(ref.run_dir, "cancelled by the user")
    return Cancelled(ref.run_id, report.done, report.left, attempt)


def close_last_attempt(run_dir: Path, why: str) -> Attempt | None:
    """The job is gone: its last attempt ends `killed`. Rank 0 closed it so when the stop path ran; an attempt
    still open (the ranks died before a verdict) or closed `requeue` (decided before the cancel; the requeue
    never came) is closed here."""
    if not run_dir.is_dir():
        return None
    attempts = Attempts(run_dir)
    last = attempts.all()[-1:]
    if not last:
        return None
    attempt = last[0]
    if attempt.outcome in (None, Outcome.requeue):
        before = attempt.reason or "its ranks ended before a verdict"
        attempt.ended = attempt.ended or time.time()
        attempt.outcome, attempt.reason = Outcome.killed, f"{why}; {before}"[:2000]
        attempts.save(attempt)
    return attempt


def watch(ref: RunRef, emit: Callable[[Line], Any], say: Callable[[str], Any] | None = None,
          follower: Follower | None = None, attempt: int | None = None) -> RunRef:
    """Stream the followed ranks' new lines (emit; rank 0 by default) and one line per requeued attempt (say)
    until the job ends, across requeues; return the reconciled run. attempt: only that attempt's lines."""
    launcher = registry.load(ref.backend).LAUNCHER
    follower = follower or Follower(ref.run_dir / "logs", {0})
    told: set[int] = set()
    say = say or (lambda text: None)
    newest = [0]  # the newest attempt a line was shown of

    def drain(final: bool) -> None:
        for line in follower.poll(final):
            if line.attempt and line.attempt > newest[0]:  # how the attempts before it ended, first
                newest[0] = line.attempt
                _say_attempt_ends(ref.run_dir, told, say, before=line.attempt)
            if show(line) and (attempt is None or line.attempt == attempt):
                emit(line)

    while True:
        drain(final=False)
        _say_attempt_ends(ref.run_dir, told, say)
        seen = launcher.status(ref.run_dir, ref.scheduler_job_id)
        if seen is None or seen.terminal:
            drain(final=True)  # the job is gone: its logs are complete
            _say_attempt_ends(ref.run_dir, told, say)
            return reconcile(find_run(ref.run_id, ref.uri))
        time.sleep(launcher.poll_s)


def _say_attempt_ends(run_dir: Path, told: set[int], say: Callable[[str], Any], before: int | None = None) -> None:
    """'attempt 1 ended: network (DistNetworkError: …); requeue 2/4' for each attempt that closed requeued (only
    those numbered below `before`)."""
    history = Attempts(run_dir).all()
    fresh = [a for a in history if a.outcome is Outcome.requeue and a.number not in told
             and (before is None or a.number < before)]
    if not fresh:
        return
    try:
        allowed = 1 + int(JobFile.read(run_dir).spec.get("fault_tolerance", {}).get("max_restarts", 3))
    except (OSError, ValueError, TypeError):
        allowed = 0
    for a in fresh:
        told.add(a.number)
        cause, _, detail = (a.reason or "").partition(": ")
        ordinal = 1 + restarts_used(e for e in history if e.number <= a.number)  # its place since a fresh start
        of = f"/{allowed}" if allowed else ""
        say(f"attempt {a.number} ended: {cause or 'unknown'} ({detail.strip() or 'no detail'}); "
            f"requeue {ordinal + 1}{of}")


def list_runs(uri: str, limit: int | None = 50, state: str | None = None, experiment: str | None = None,
              hide_tag: str | None = None) -> list[RunRef]:
    """trainctl's runs in one store, newest first (all of them when limit is None); a missing store has none.
    hide_tag: runs with this tag are not listed, nor counted toward the limit."""
    if not stores.exists(uri):
        return []
    return [ref_of(uri, r) for r in store_read.search(uri, limit, state, experiment, hide_tag=hide_tag)]


def each_store(uri: str | None, limit: int | None, state: str | None, experiment: str | None, hide_tag: str | None
               ) -> Iterator[tuple[str, list[RunRef]]]:
    """(store, its runs) for the store named, else for this directory's and every store of the index. A store of
    the index that does not answer, or cannot be read, is named once the others are listed (UserError)."""
    searched, silent = ([uri], []) if uri is not None else stores.search_plan()
    unread: list[str] = []
    for store in searched:
        try:
            refs = list_runs(store, limit, state, experiment, hide_tag)
        except store_read.StoreError as exc:
            if uri is not None:
                raise
            if isinstance(exc, store_read.StoreUnreachable):
                silent.append(store)
            else:
                unread.append(f"{store} ({exc})"[:300])
            continue
        yield store, refs
    if silent:
        raise stores.not_answering(silent, named=uri is not None)
    if unread:
        raise UserError.single("tracking store", f"could not read {'; '.join(unread)}",
                               "pass it with --tracking-uri (and MLflow's login variables if it asks for one)")
