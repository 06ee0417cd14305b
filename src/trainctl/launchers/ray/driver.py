"""The Ray job's driver: `python -m trainctl.launchers.ray.driver <run dir>` (the Jobs API entrypoint; submit.py).

The driver checks the cluster (same Ray version, room for the workers: an impossible request would leave
Ray Train waiting forever), then runs Ray Train's TorchTrainer with `worker.train_loop` on
nodes x devices_per_node workers and FailureConfig(max_failures=fault_tolerance.max_restarts). When fit() is over
it makes sure the run has a final state: the workers' own verdict when rank 0 recorded one, else FAILED with
Ray's error (retries used up, a worker dead at every try). A SIGTERM (`ray job stop`, `trainctl cancel`) marks
the run KILLED and leaves; Ray ends the job's workers with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from trainctl import tracking
from trainctl.injob import short_mlflow_requests
from trainctl.launchers.ray.fit import infeasible
from trainctl.launchers.ray.submit import SUBMISSION_ENV, VERSION_ENV, run_config, scaling, torch_config
from trainctl.rundir import JobFile
from trainctl.runstate import Attempts, Outcome, State, Verdict, state_after
from trainctl.spec import Spec, spec_from_dict

log = logging.getLogger("trainctl.ray_driver")


class _Stopped(BaseException):
    """SIGTERM on the driver: `ray job stop` (trainctl cancel, or someone else)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends us the ordinary way
    raise _Stopped()


def _set_state(job: JobFile, state: State, reason: str) -> None:
    """The run's final state, unless it is already final (a user's cancel, or the workers' verdict, wins)."""
    try:
        tracking.set_state(job.tracking_uri, job.run_id, state, reason=reason, unless=tracking.ended, retry_s=60.0)
    except Exception:
        log.exception("could not record %s in MLflow", state.value)


def _close_attempt(run_dir: Path, outcome: Outcome, reason: str) -> None:
    """Close the newest attempt if no rank 0 did (its group was killed): the attempt log stays complete."""
    from trainctl.worker import attempt as attempts

    last = Attempts(run_dir).last()
    if last is not None and last.ended is None:
        attempts.end(run_dir, last, Verdict(outcome, reason), None)


def _cluster_problem(spec: Spec) -> str | None:
    import ray

    sc = scaling(spec)
    alive = [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive")]
    return infeasible(alive, sc["resources_per_worker"], sc["num_workers"])


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1500]


def run(run_dir: Path) -> int:
    """The driver: fit on the Ray cluster, then the run's final state. Returns the process's exit code."""
    job = JobFile.read(run_dir)
    spec = spec_from_dict(job.spec)
    sid = os.environ.get(SUBMISSION_ENV, "")
    error: BaseException | None = None
    try:
        import ray

        wanted = os.environ.get(VERSION_ENV)
        if wanted and ray.__version__ != wanted:
            reason = f"the submitter runs Ray {wanted}, this driver Ray {ray.__version__}: versions must match"
            _set_state(job, State.FAILED, reason)
            log.error(reason)
            return 1
        ray.init(logging_level=logging.WARNING)
        signal.signal(signal.SIGTERM, _on_sigterm)  # after ray.init: Ray's own failure handler would print and die
        problem = _cluster_problem(spec)
        if problem:
            reason = f"the Ray cluster cannot run this job: it {problem}"
            _set_state(job, State.FAILED, reason)
            log.error(reason)
            return 1
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        rc = run_config(spec, run_dir, sid or f"trainctl-{run_dir.name}")
        from trainctl.launchers.ray.worker import train_loop  # pickled by reference: the workers import it

        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"run_dir": str(run_dir)},
            scaling_config=ScalingConfig(**scaling(spec)),
            torch_config=TorchConfig(**torch_config(spec)),
            run_config=RunConfig(name=rc["name"], storage_path=rc["storage_path"],
                                 failure_config=FailureConfig(max_failures=rc["max_failures"])),
        )
        error = _fit(trainer)
        log.info("Ray Train's fit() returned%s", f" an error: {_error_text(error)[:200]}" if error else "")
    except _Stopped:
        reason = f"Ray job {sid} stopped (ray job stop / trainctl cancel)"
        _close_attempt(run_dir, Outcome.killed, reason)
        _set_state(job, State.KILLED, reason)
        sys.stderr.write(f"trainctl: {reason}\n")
        sys.stderr.flush()
        os._exit(1)  # Ray ends the controller and workers of this job when its driver is gone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return _finish(job, run_dir, spec, error)


def _fit(trainer: Any) -> BaseException | None:
    """trainer.fit() in a thread: the main thread stays in Python, where a SIGTERM handler runs at once (a main
    thread blocked in ray.get would only see it after `ray job stop`'s 3 s grace, when SIGKILL comes)."""
    outcome: list[BaseException | None] = []
    t0 = time.monotonic()

    def fit() -> None:
        try:
            trainer.fit()
            outcome.append(None)
        except BaseException as exc:  # TrainingFailedError: retries used up, or a non-retryable controller error
            log.error("Ray Train ended with an error after %.0f s:\n%s", time.monotonic() - t0,
                      traceback.format_exc())
            outcome.append(exc)

    thread = threading.Thread(target=fit, name="trainctl-ray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
    return outcome[0] if outcome else RuntimeError("Ray Train's fit() ended without a result")


def _finish(job: JobFile, run_dir: Path, spec: Spec, error: BaseException | None) -> int:
    """The run's final state after fit(): rank 0's verdict if it recorded one, else FAILED with Ray's error."""
    last = Attempts(run_dir).last()
    if error is not None:
        reason = (f"Ray Train gave up (FailureConfig(max_failures={spec.fault_tolerance.max_restarts})): "
                  f"{_error_text(error)}")
        if last and last.reason and last.outcome is Outcome.requeue:
            reason = f"{reason}; last attempt: {last.reason}"
        _close_attempt(run_dir, Outcome.failed, reason)
        _set_state(job, State.FAILED, reason)
    elif last and last.closed_otherwise and last.outcome is not None:
        _set_state(job, state_after(last.outcome), last.reason or last.outcome.value)  # only if rank 0 could not
    else:
        _close_attempt(run_dir, Outcome.failed, "the workers ended without a verdict")
        _set_state(job, State.FAILED, "the workers ended without a verdict")
    try:
        final = tracking.current_state(job.tracking_uri, job.run_id)
    except Exception:
        final = State.FINISHED if last and last.outcome is Outcome.finished and error is None else State.FAILED
    sys.stderr.write(f"trainctl: run {job.run_id} {final.value}\n")
    return 0 if final is State.FINISHED else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m trainctl.launchers.ray.driver RUN_DIR\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="[driver %(asctime)s] %(levelname)s %(name)s: %(message)s")
    short_mlflow_requests()
    code = run(Path(args[0]).absolute())
    _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown (torch's and MLflow's finalizers: ≈ 2 s here), so that the Ray job
    ends as soon as the run has: the run's state is recorded and Ray's connection closed by now."""
    t0 = time.monotonic()
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()  # flushes the workers' last forwarded lines and tells the GCS this driver is done
    log.info("driver done (ray.shutdown %.1f s)", time.monotonic() - t0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
