"""Ray backend, submit side: one Ray job per submission, through the Ray Jobs API (the dashboard,
`backend.ray.address`).

The request (`request()`; the dry run prints it as JSON):

    entrypoint   python -m trainctl.launchers.ray.driver <run dir>      every path shlex-quoted
    runtime_env  py_modules: the user's own code (top-level modules of the spec's class paths that no installed
                 distribution provides; trainctl and its dependencies must be installed on every node);
                 env_vars: backend.ray.env_vars, the ${env:NAME} the spec references and MLflow credentials
                 (taken from the submitter's environment, as SLURM would export them), the pinned Ray version;
                 worker_process_setup_hook: worker.py setup_worker_process (SIGUSR2 → trainctl's stop flag)
    metadata     run id, run dir; submission_id `trainctl-<name>-<run id[:8]>-<random>` (a resume submits anew)
    entrypoint_num_cpus 0: the driver (and Ray Train's controller) take no CPU from the training workers

The driver (driver.py) runs Ray Train's TorchTrainer: workers = nodes x devices_per_node, each
{CPU: cpus_per_worker, GPU: 1 when accelerator is gpu, memory: mem_gb / devices_per_node}, SPREAD (or PACK),
FailureConfig(max_failures=fault_tolerance.max_restarts), storage under the run directory. Each worker
(worker.py) runs the one trainctl worker (entrypoint.train), so checkpoints, resume, callbacks and the
MLflow run are the same as on every backend.

Before anything is sent the cluster is checked: its Ray version must equal this client's (pinned in
pyproject), and its alive nodes must be able to hold the workers; Ray Train would otherwise wait for an
impossible placement forever.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import shlex
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from trainctl.errors import UserError
from trainctl.launchers.base import CancelReport, Say, Submission, poll_until, read_rank_logs
from trainctl.launchers.ray.fit import GIB, bundle_text, placement_problem
from trainctl.launchers.ray.logs import split_logs
from trainctl.launchers.registry import RAY_HINT
from trainctl.rundir import JobFile, atomic_write_text
from trainctl.runstate import State
from trainctl.spec import Accelerator, Spec, env_refs, resolve_env
from trainctl.tracking import SECRET_NAME

log = logging.getLogger("trainctl.ray")

DRIVER_MODULE = "trainctl.launchers.ray.driver"
WORKER_MODULE = "trainctl.launchers.ray.worker"
SETUP_HOOK = f"{WORKER_MODULE}.setup_worker_process"
# Passed to the driver and the workers; the driver refuses to run under another Ray.
VERSION_ENV = "TRAINCTL_RAY_VERSION"
SUBMISSION_ENV = "TRAINCTL_RAY_SUBMISSION_ID"
# Off by default. "1" adds, on every worker, what Ray's own Lightning integration does each epoch
# (RayTrainReportCallback: a checkpoint written to a temp dir and reported to Ray storage). trainctl resumes
# from its own run directory, so that per-epoch cost buys nothing; the switch stays so that
# bench/ray_overhead.py can measure it.
REPORT_EVERY_EPOCH_ENV = "TRAINCTL_RAY_REPORT_EVERY_EPOCH"
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")

# Ray's JobStatus values in trainctl's vocabulary.
JOB_STATES = {"PENDING": State.PENDING, "RUNNING": State.RUNNING, "STOPPED": State.KILLED,
              "SUCCEEDED": State.FINISHED, "FAILED": State.FAILED}


def ray_version() -> str:
    """The Ray this client runs: the version pinned in pyproject (ray[default,train]==…)."""
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        raise UserError.single("backend.kind", "backend 'ray' needs Ray, which is not installed",
                               RAY_HINT) from None


# ---------------------------------------------------------------- what the driver asks Ray Train for


def scaling(spec: Spec) -> dict[str, Any]:
    """ScalingConfig(**scaling(spec)) in the driver: one worker per device, on distinct nodes when asked."""
    res, opts = spec.resources, spec.backend.ray
    gpu = res.accelerator is Accelerator.gpu
    per_worker: dict[str, float] = {"CPU": float(opts.cpus_per_worker or res.cpus_per_task)}
    if gpu:
        per_worker["GPU"] = 1.0
    per_worker["memory"] = float(math.floor(res.mem_gb * GIB / res.devices_per_node))
    return {
        "num_workers": res.nodes * res.devices_per_node,
        "use_gpu": gpu,
        "resources_per_worker": per_worker,
        "placement_strategy": "SPREAD" if opts.spread else "PACK",
    }


def torch_config(spec: Spec) -> dict[str, Any]:
    """TorchConfig: Ray creates the process group; init_method env also exports MASTER_ADDR/PORT."""
    gpu = spec.resources.accelerator is Accelerator.gpu
    return {"backend": "nccl" if gpu else "gloo", "init_method": "env",
            "timeout_s": int(spec.fault_tolerance.collective_timeout_s)}


def run_config(spec: Spec, run_dir: Path, submission_id: str) -> dict[str, Any]:
    """RunConfig: Ray's own storage lives in the run directory; the retries are the spec's max_restarts."""
    return {"name": submission_id, "storage_path": str(run_dir / "ray"),
            "max_failures": spec.fault_tolerance.max_restarts}


# ---------------------------------------------------------------- the request


def submission_id(spec: Spec, run_dir: Path) -> str:
    """No underscores: the workers' log files are named <submission id>_<rank>_log.out (launchers/base.py). A sweep's
    trial (<sweep dir>/trials/NNNN) is named by its sweep and its index."""
    base = f"{run_dir.parent.parent.name}-{run_dir.name}" if run_dir.parent.name == "trials" else run_dir.name
    name = re.sub(r"[^A-Za-z0-9-]", "-", base)
    return f"trainctl-{name}-{secrets.token_hex(3)}"


def user_code(spec: Spec) -> list[str]:
    """The top-level modules and packages of the spec's class paths that no installed distribution provides.

    These are shipped to every node (runtime_env py_modules, uploaded by the Jobs API client). Installed
    packages (trainctl itself, Lightning, the user's pip-installed code) are not: every node has them.
    """
    paths: list[str] = []
    installed = importlib.metadata.packages_distributions()
    prefixes = {Path(p).resolve() for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                            sysconfig.get_paths()["platlib"])}
    for top in sorted({cp.split(".")[0] for cp in _class_paths(spec.to_dict())}):
        if top in installed or top in sys.builtin_module_names:
            continue
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin or found.origin in ("built-in", "frozen"):
            if found is not None and found.submodule_search_locations:  # a namespace package: its directories
                paths += [str(Path(p).resolve()) for p in found.submodule_search_locations]
            continue
        origin = Path(found.origin).resolve()
        where = origin.parent if found.submodule_search_locations else origin
        if any(where.is_relative_to(p) for p in prefixes):
            continue
        if str(where) not in paths:
            paths.append(str(where))
    return paths


def _class_paths(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [c for v in node.values() for c in _class_paths(v)]
    if isinstance(node, list):
        return [c for v in node for c in _class_paths(v)]
    return []


def environment(spec: Spec, sid: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in dict.fromkeys([*FORWARDED_ENV, *env_refs(spec.to_dict())]):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(resolve_env(spec.backend.ray.env_vars))  # ${env:NAME} in a value: this client's value
    env.update({
        VERSION_ENV: ray_version(),
        SUBMISSION_ENV: sid,
        "PYTHONUNBUFFERED": "1",
        "RAY_DEDUP_LOGS": "0",  # every rank's lines, not "[repeated 2x across cluster]"
        "RAY_COLOR_PREFIX": "0",  # plain "(RayTrainWorker pid=…)" prefixes in the job's log
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # as the CLI sets for the other backends' workers
    })
    return env


def request(spec: Spec, run_dir: Path, job_run_id: str, sid: str) -> dict[str, Any]:
    """The keyword arguments of JobSubmissionClient.submit_job for this run."""
    runtime_env: dict[str, Any] = {"env_vars": environment(spec, sid), "worker_process_setup_hook": SETUP_HOOK}
    code = user_code(spec)
    if code:
        runtime_env["py_modules"] = code
        runtime_env["excludes"] = ["__pycache__", "*.pyc", ".git"]
    return {
        "submission_id": sid,
        "entrypoint": shlex.join(["python", "-m", DRIVER_MODULE, str(run_dir)]),
        "runtime_env": runtime_env,
        "metadata": {"trainctl.run_id": job_run_id, "trainctl.run_dir": str(run_dir)},
        "entrypoint_num_cpus": 0,
    }


def _redacted(req: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(req)
    env = out["runtime_env"]["env_vars"]
    for name in env:
        if SECRET_NAME.search(name):
            env[name] = "***"
    return out


def render(spec: Spec, run_dir: Path, run_id: str = "<run-id>", sid: str = "<submission-id>") -> str:
    """What submit sends (secret values masked) and what the driver then asks Ray Train for."""
    req = _redacted(request(spec, run_dir, run_id, sid))
    sc, tc, rc = scaling(spec), torch_config(spec), run_config(spec, run_dir, sid)
    return "\n".join([
        f"Ray Jobs API {spec.backend.ray.address}: JobSubmissionClient.submit_job(",
        json.dumps(req, indent=2),
        ")",
        f"the driver ({DRIVER_MODULE}) runs ray.train.torch.TorchTrainer({WORKER_MODULE}.train_loop,",
        f"  scaling_config=ScalingConfig({_kwargs(sc)}),",
        f"  torch_config=TorchConfig({_kwargs(tc)}),",
        f"  run_config=RunConfig(name={rc['name']!r}, storage_path={rc['storage_path']!r}, "
        f"failure_config=FailureConfig(max_failures={rc['max_failures']})))",
        f"each worker: trainctl.worker.entrypoint.train({str(run_dir)!r}, <job.json>, <rank from Ray Train>, "
        "RayInJob)",
        f"requires: Ray {ray_version()} on the cluster; nodes able to hold {sc['num_workers']} workers of "
        f"{bundle_text(sc['resources_per_worker'])}",
    ])


def _kwargs(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


# ---------------------------------------------------------------- the Jobs API


@functools.lru_cache(maxsize=8)
def _client(address: str) -> Any:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise UserError.single("backend.kind", f"backend 'ray' is not installed: {exc}",
                               RAY_HINT) from None

    try:
        return JobSubmissionClient(address)  # also checks that a Ray dashboard answers there
    except Exception as exc:
        raise UserError.single("backend.ray.address", f"no Ray Jobs API answers at {address}: {exc}",
                               "start the cluster (make ray-up), or set backend.ray.address to its dashboard URL "
                               "(tunnel port 8265 with `ray dashboard cluster.yaml`)") from None


def _scheduler(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "scheduler.json").read_text())
    except (OSError, ValueError):
        return {}


def _address(run_dir: Path) -> str:
    found = _scheduler(run_dir).get("address")
    if found:
        return str(found)
    try:
        return str(JobFile.read(run_dir).spec["backend"]["ray"]["address"])
    except (OSError, ValueError, KeyError):
        return "http://127.0.0.1:8265"


def check_cluster(spec: Spec, address: str) -> None:
    """The same Ray as ours, and room for the workers on the alive nodes: else a UserError now."""
    client = _client(address)
    theirs, ours = client._server_ray_version, ray_version()
    if theirs and theirs != ours:
        raise UserError.single("backend.ray.address", f"the Ray cluster at {address} runs Ray {theirs}, this "
                               f"client Ray {ours}", f"Ray must be the same version on every node and client: "
                               f"install ray=={ours} on the cluster (or this client's to match)")
    sc = scaling(spec)
    why = placement_problem(address, sc["resources_per_worker"], sc["num_workers"])
    if why:
        res = spec.resources
        raise UserError.single(
            "resources", f"the Ray cluster at {address} can never run this job: it {why}",
            f"ask for less (resources.nodes x devices_per_node = {res.nodes} x {res.devices_per_node} workers, "
            f"resources.accelerator, cpus_per_task / backend.ray.cpus_per_worker, mem_gb per node) or add nodes")


class RayLauncher:
    kind = "ray"
    poll_s = 0.5  # one Jobs API request

    def rendezvous_port(self) -> int:
        return 0  # Ray Train creates the process group

    def dry_run(self, spec: Spec, run_dir: Path) -> str:
        return render(spec, run_dir)

    def submit(self, spec: Spec, run_dir: Path, job: JobFile) -> Submission:
        address = spec.backend.ray.address
        check_cluster(spec, address)
        sid = submission_id(spec, run_dir)
        req = request(spec, run_dir, job.run_id, sid)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        got = _client(address).submit_job(**copy.deepcopy(req))  # the client rewrites py_modules to URIs
        atomic_write_text(run_dir / "scheduler.json", json.dumps({
            "job_id": got, "submission_id": got, "address": address, "submitted": time.time(),
            "ray_version": ray_version(), "request": _redacted(req)}, indent=2))
        sc = scaling(spec)
        return Submission(got, f"Ray job {got} on {address}: {sc['num_workers']} workers of "
                          f"{bundle_text(sc['resources_per_worker'])}, {sc['placement_strategy']}; "
                          f"`ray job logs {got}` or trainctl logs")

    def status(self, run_dir: Path, scheduler_job_id: str) -> State | None:
        """The Jobs API's view: PENDING/RUNNING, or how the job ended (None: the cluster forgot it)."""
        address = _address(run_dir)
        try:
            raw = _client(address).get_job_status(scheduler_job_id)
        except UserError:
            log.warning("the Ray Jobs API at %s does not answer: job %s treated as still running", address,
                        scheduler_job_id)
            return State.RUNNING
        except Exception as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            log.warning("the Ray Jobs API at %s failed (%s): job %s treated as still running", address, exc,
                        scheduler_job_id)
            return State.RUNNING
        return JOB_STATES.get(str(getattr(raw, "value", raw)), State.RUNNING)

    def logs(self, run_dir: Path, scheduler_job_id: str) -> dict[str, str]:
        """The job's log from the Jobs API (driver and every worker), split by rank; the run dir's copies else."""
        try:
            text = _client(_address(run_dir)).get_job_logs(scheduler_job_id)
        except Exception as exc:
            out = read_rank_logs(run_dir / "logs")
            out[f"ray job {scheduler_job_id}"] = f"(the Jobs API has no log: {exc}; the ranks' copies are above)"
            return out
        return split_logs(text, scheduler_job_id)

    def cancel(self, run_dir: Path, scheduler_job_id: str, grace_s: float, say: Say) -> CancelReport:
        """`ray job stop`: SIGTERM to the driver (it closes the attempt killed), SIGKILL 3 s later; Ray ends its
        workers with it. Then wait (up to grace_s) for the Jobs API to call the job over."""
        report, sid = CancelReport(say), scheduler_job_id
        if (seen := self.status(run_dir, sid)) is None or seen.terminal:  # None: the cluster forgot the job
            report.step(f"Ray job {sid} was no longer running")
            return report
        try:
            _client(_address(run_dir)).stop_job(sid)
        except Exception as exc:
            raise UserError.single("RUN_ID", f"ray job stop {sid} failed: {exc}",
                                   "is the Ray dashboard reachable from here?") from None
        report.step(f"ray job stop {sid}: SIGTERM to its driver, SIGKILL 3 s later; Ray ends its workers with it; "
                    f"waiting up to {grace_s:.0f} s for the job to end")
        now = poll_until(lambda: self.status(run_dir, sid), lambda s: s is None or s.terminal, grace_s, self.poll_s)
        if now is None or now.terminal:
            report.step(f"Ray job {sid} ended ({now.value if now else 'gone'})")
        else:
            report.left = [f"Ray job {sid} ({now.value}): see `ray job status {sid}`"]
        return report


LAUNCHER = RayLauncher()
