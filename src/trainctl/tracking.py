"""MLflow: one run per job, created at submit; every rank and attempt attaches to it; only trainctl ends it.

The job's state lives in the tag `trainctl.state` (PENDING, RUNNING, REQUEUED, FINISHED, FAILED, KILLED);
MLflow's own status follows it (RUNNING until a terminal state). Secrets never reach MLflow: values read
from the environment (${env:NAME}) stay as references, and spec paths listed in tracking.redact are masked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainctl import __version__
from trainctl.errors import UserError
from trainctl.runstate import REASON_TAG, STATE_TAG, State, state_of
from trainctl.store_read import client as client  # one MlflowClient factory; store_read reads with it too

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainctl.spec import Spec

log = logging.getLogger("trainctl")

REDACTED = "***"
SECRET_NAME = re.compile(r"(?i)(secret|token|password|passwd|api[_-]?key|credential|private[_-]?key)")


# MLflow's own variables: the CLI, the ranks and `trainctl sync` all read them (Ray/SLURM jobs inherit them).
ACCESS_HINT = ("this server wants a login: export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
               "MLFLOW_TRACKING_TOKEN) for a user with access to the experiment")

def default_tracking_uri(workdir: str) -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded sqlite store in the workdir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(workdir)


def embedded_uri(workdir: str) -> str:
    """The embedded store: `<workdir>/mlflow.db`, workdir taken relative to the current directory."""
    return f"sqlite:///{Path(workdir).absolute() / 'mlflow.db'}"


# MLflow 3 tells GenAI experiments (traces, evaluations) from model-training ones by this experiment tag; its UI
# also has a global "GenAI / Model training" switch that the query parameter of ui_link sets for the page opened.
KIND_TAG, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"
UI_VIEW = "workflowType=machine_learning"


def _experiment_id(cl: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it when missing; either way it is marked a model-training experiment, unless
    someone already chose a kind for it."""
    exp = cl.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):  # embedded store: artifacts beside the database
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
        try:
            return cl.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND_TRAINING})
        except Exception:  # created concurrently by another submit
            exp = cl.get_experiment_by_name(name)
            if exp is None:
                raise
    if KIND_TAG not in exp.tags:
        cl.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND_TRAINING)
    return exp.experiment_id


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment (or one of its runs) served at `uri`, opened in the model-training view."""
    page = f"{uri.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{page}/runs/{run_id}?{UI_VIEW}" if run_id else f"{page}?{UI_VIEW}"


def run_page(uri: str, run_id: str) -> str:
    """ui_link of a run; a store that is not a server is linked as `make mlflow` serves it."""
    server = uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return ui_link(server, client(uri).get_run(run_id).info.experiment_id, run_id)


def description(spec: Spec, backend: str) -> str:
    """The run's description in the UI (MLflow's `mlflow.note.content`): which spec trains what, where."""
    data = f" on `{spec.data.class_path}`" if spec.data else ""
    ranks = spec.resources.nodes * spec.resources.devices_per_node
    return (f"**{spec.name}** trains `{spec.model.class_path}`{data}: {ranks} rank(s) on the {backend} backend "
            f"({spec.resources.nodes} node(s) x {spec.resources.devices_per_node}), experiment `{spec.experiment}`.")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = data
    return out


def redact_spec(spec_dict: dict[str, Any], redact_paths: list[str]) -> dict[str, Any]:
    """Mask spec paths marked secret and keys whose names look secret; ${env:…} references stay as written."""

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: (REDACTED if _is_secret(f"{path}.{k}".lstrip("."), k, redact_paths) else walk(v, f"{path}.{k}"))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        return node

    return walk(spec_dict, "")


def _is_secret(path: str, key: str, redact_paths: list[str]) -> bool:
    return path in redact_paths or bool(SECRET_NAME.search(str(key)))


def redact_text(text: str) -> str:
    """Remove the values of secret-looking environment variables from free text (logs, errors)."""
    for name, value in os.environ.items():
        if value and len(value) >= 4 and SECRET_NAME.search(name):
            text = text.replace(value, REDACTED)
    return text


def git_commit(path: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_name(spec_name: str, run_id: str) -> str:
    """`<spec name>-<run id[:8]>`: tells runs of one spec apart in `trainctl ls` and the UI, and is the name of the
    run's directory (rundir.run_dir_for). The spec's name stays in the tag `trainctl.name`."""
    return f"{spec_name}-{run_id[:8]}"


def standard_tags(source: str | None) -> dict[str, str]:
    """MLflow's own tags for who ran what: the user, the spec file as the source, the git commit of the code."""
    import getpass

    tags = {"mlflow.source.type": "LOCAL"}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    if source:
        tags["mlflow.source.name"] = str(Path(source).absolute())
    # The user's modules are imported from the working directory; a spec kept in its own repository says so.
    commit = git_commit() or (git_commit(Path(source).absolute().parent) if source else None)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def create_run(spec: Spec, uri: str, backend: str, source: str | None = None) -> str:
    """Create the job's run at submit time and log the params (the flattened, redacted resolved spec).
    `source` is the spec file, when there is one (resume forks a stored spec)."""
    from mlflow.entities import Param, RunTag

    cl = client(uri)
    try:
        exp_id = _experiment_id(cl, spec.experiment, uri)
        tags = {
            **standard_tags(source),
            "trainctl.name": spec.name,
            "trainctl.backend": backend,
            STATE_TAG: State.PENDING.value,
            "trainctl.version": __version__,
            "trainctl.world_size": str(spec.resources.nodes * spec.resources.devices_per_node),
            "trainctl.submit_host": socket.gethostname(),
            "mlflow.note.content": description(spec, backend),
        }
        run = cl.create_run(exp_id, run_name=spec.name, tags=tags)
    except UserError:
        raise
    except Exception as exc:
        refused = any(code in str(exc) for code in ("error code 401", "error code 403"))
        what = "MLflow refused access" if refused else "cannot reach MLflow"
        raise UserError.single("tracking.uri", f"{what} at {uri}: {type(exc).__name__}: {exc}",
                               ACCESS_HINT if refused else
                               "start it with `make mlflow`, or unset MLFLOW_TRACKING_URI for the embedded store"
                               ) from None
    run_id = run.info.run_id
    params = flatten(redact_spec(spec.to_dict(), spec.tracking.redact))
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, max(len(items), 1), 100):  # MLflow takes at most 100 params per request
        name = [RunTag("mlflow.runName", run_name(spec.name, run_id))] if i == 0 else []
        cl.log_batch(run_id, params=items[i : i + 100], tags=name)
    from trainctl import provenance

    try:  # best effort: a run whose provenance could not be recorded still trains
        provenance.record(cl, run_id, Path.cwd() if git_commit() or not source else Path(source).absolute().parent)
    except Exception as exc:
        provenance.log.warning("could not record the run's code and packages: %s: %s", type(exc).__name__, exc)
    return run_id


def set_state(uri: str, run_id: str, state: State, reason: str | None = None, *,
              unless: Callable[[State], bool] | None = None, retry_s: float = 0.0, **tags: str) -> bool:
    """Record the job's state, the one writer of `trainctl.state`; a final state also ends the MLflow run (REST for a
    server: no mlflow import).

    unless: the state already recorded that wins over this one (`cancelled`: a user's KILLED over a verdict;
    `ended`: any final state over the Ray driver's fallback); then only `tags` are written (facts about the job,
    whoever ended it), the state and reason are left as they are, and False is returned.
    retry_s: retry through a tracking outage of up to that long (a verdict must reach MLflow), then raise.
    """
    from trainctl import store_read

    facts = {k: str(v) for k, v in tags.items()}
    all_tags = {STATE_TAG: state.value, **facts}
    if reason is not None:
        all_tags[REASON_TAG] = redact_text(reason)[:4000]
    deadline, delay = time.monotonic() + retry_s, 1.0
    while True:
        try:
            if unless is not None and unless(current_state(uri, run_id)):
                if facts:
                    store_read.write_state(uri, run_id, facts, None, end=False)
                return False
            store_read.write_state(uri, run_id, all_tags, state.value if state.terminal else "RUNNING",
                                   end=state.terminal)
            return True
        except Exception:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("MLflow unreachable while recording the run's state; retrying in %.0f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def cancelled(state: State) -> bool:
    """`unless=` for a rank's write: a user's cancel wins."""
    return state is State.KILLED


def ended(state: State) -> bool:
    """`unless=` for a fallback: a state already final wins."""
    return state.terminal


def current_state(uri: str, run_id: str) -> State:
    from trainctl import store_read

    rec = store_read.get_run(uri, run_id)
    if rec is None:
        raise UserError.single("RUN_ID", f"no run {run_id} in {uri}", "pass the store the run was submitted to")
    return state_of(rec.tags, rec.status)


def wait_for_server(uri: str, timeout_s: float = 30.0) -> None:
    """Block until an http(s) tracking server answers /health (no-op for file/sqlite stores)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise UserError.single("tracking.uri", f"no MLflow server answers at {uri}",
                                   "start one with `make mlflow` or fix MLFLOW_TRACKING_URI")
        time.sleep(0.2)
