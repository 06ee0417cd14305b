"""A job tracked on a real MLflow server that wants a login (MLflow's basic-auth app), as site servers do.

The CLI, the ranks' metrics (REST batches), artifacts and `trainctl status` all use MLflow's own credential
variables; a wrong login is refused at submit with a HINT, before anything is created.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli, serve_mlflow
from mlflow import MlflowClient

pytestmark = pytest.mark.mlflow

ADMIN, PASSWORD = "admin", "trainctl-Test-pass-1"
LOGIN = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow's basic-auth app on trainctl's lean server command, with an admin login."""
    yield from serve_mlflow(tmp_path_factory.mktemp("mlflow-auth"), "an MLflow server with basic auth",
                            ("--app-name", "basic-auth"),
                            {"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "trainctl-test"})


def _submit(workdir: Path, uri: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli("submit", "jobs/digits.yaml", "--set", f"workdir={workdir}", "--set", f"tracking.uri={uri}",
                   "--set", "trainer.max_epochs=2", "--set", "early_stopping=null", env=env, timeout=300)


def test_a_wrong_login_is_refused_at_submit(auth_server: str, tmp_path: Path) -> None:
    res = _submit(tmp_path, auth_server, {**LOGIN, "MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "tracking.uri: MLflow refused access" in res.stderr and "MLFLOW_TRACKING_USERNAME" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir()), "nothing created for a job that was not submitted"


def test_job_with_a_login_lands_whole(auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = _submit(tmp_path, auth_server, LOGIN)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run_id = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout)[1]
    for key, value in LOGIN.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=auth_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trainctl.state"] == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(len(steps))) and len(steps) == 2 * 20, "every step once, through the REST batches"
    assert "grad/norm" in run.data.metrics and "val/acc" in run.data.metrics
    assert {"spec.yaml", "checkpoints", "logs"} <= {a.path for a in client.list_artifacts(run_id)}
    status = run_cli("status", run_id, "--tracking-uri", auth_server, env=LOGIN)
    assert status.returncode == 0 and "FINISHED" in status.stdout, status.stderr
