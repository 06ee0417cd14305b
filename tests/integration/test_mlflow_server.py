"""`make mlflow-server` (cluster/mlflow/): PostgreSQL + an MLflow server with several workers, idempotent, stopped
exactly by its pid files, and a clear error when it cannot start."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, free_port, require
from mlflow import MlflowClient
from mlflow.entities import Metric

pytestmark = pytest.mark.mlflow
SCRIPTS = ROOT / "cluster" / "mlflow"


def _sh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True, env=env, timeout=300)


def _alive(pid: int) -> bool:
    """Running, not a zombie: a daemon's parent here may be an init that does not reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_up_is_idempotent_stores_in_postgres_and_down_stops_exactly_it() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="trainctl-mlflow-"))
    workdir.chmod(0o755)  # PostgreSQL runs as `postgres` when the tests run as root
    env = {**os.environ, "DIR": str(workdir), "PORT": str(free_port()), "PGPORT": str(free_port()),
           "WORKERS": "2", "PY": sys.executable}
    uri = f"http://127.0.0.1:{env['PORT']}"
    try:
        up = _sh("up.sh", env)
        require(up.returncode == 0, "PostgreSQL", up.stderr[-2000:])
        assert "2 workers" in up.stdout, up.stdout
        pid = int((workdir / "run" / "mlflow.pid").read_text())
        postmaster = int((workdir / "pgdata" / "postmaster.pid").read_text().split()[0])
        again = _sh("up.sh", env)
        assert again.returncode == 0 and f"already up at {uri} (pid {pid}" in again.stdout, again.stdout

        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("pg-check"))
        run_id = run.info.run_id
        client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (s + 1), 0, s) for s in range(250)], synchronous=True)
        client.log_text(run_id, "hello", "notes/a.txt")
        import psycopg2  # the rows are PostgreSQL's, not a sqlite file's

        password = (workdir / "run" / "db-password").read_text().strip()
        with psycopg2.connect(host="127.0.0.1", port=int(env["PGPORT"]), user="mlflow", password=password,
                              dbname="mlflow") as db, db.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,))
            assert cur.fetchone()[0] == 250
        stored = list((workdir / "artifacts").rglob("a.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello", "artifacts are served from DIR/artifacts"
        assert _sh("status.sh", env).returncode == 0

        down = _sh("down.sh", env)
        assert down.returncode == 0, down.stderr
        assert not _alive(pid) and not _alive(postmaster), "the server and PostgreSQL are gone"
        assert not (workdir / "run" / "mlflow.pid").exists()
        assert _sh("status.sh", env).returncode == 1
    finally:
        _sh("down.sh", env)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_taken_port_is_a_clear_error() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="trainctl-mlflow-"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DIR": str(workdir), "PORT": str(port), "PY": sys.executable}
        res = _sh("up.sh", env)
    shutil.rmtree(workdir, ignore_errors=True)
    assert res.returncode == 1
    assert f"port {port} is taken" in res.stderr and "HINT" in res.stderr and "Traceback" not in res.stderr
