"""Session services for the tests: a real MLflow server, SLURM cluster and Ray cluster.

Each fixture reuses a running instance and stops only what it started. A test that needs a service that is
missing skips on a developer machine, but fails when CI=true: skips are not passes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TRAINCTL = [sys.executable, "-m", "trainctl.cli"]


def require(ok: bool, what: str, hint: str) -> None:
    """Skip (developer machine) or fail (CI) when a real service is missing."""
    if ok:
        return
    message = f"{what} is not available: {hint}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_mlflow(workdir: Path, what: str, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """trainctl's lean MLflow server (plus extra_args / extra_env) on a free port: yields its URI, then stops it."""
    from trainctl.mlflow_server import answers, command, environment

    port = _free_port()
    with open(workdir / "server.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([*command(port, workdir), *extra_args], env={**environment(), **(extra_env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not answers(uri) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.25)
    ok = answers(uri)
    if not ok:
        proc.kill()
    require(ok, what, f"it did not start: {(workdir / 'server.log').read_text()[-2000:]}")
    yield uri
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session", autouse=True)
def store_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every submit records its store in a per-user index (trainctl.stores): the tests' index is their own."""
    before = os.environ.get("TRAINCTL_STATE_DIR")
    path = tmp_path_factory.mktemp("trainctl-state")
    os.environ["TRAINCTL_STATE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("TRAINCTL_STATE_DIR", None)
    else:
        os.environ["TRAINCTL_STATE_DIR"] = before


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http://127.0.0.1:<port> of a real, lean MLflow server (reused if TRAINCTL_TEST_MLFLOW_URI answers)."""
    from trainctl.mlflow_server import answers

    existing = os.environ.get("TRAINCTL_TEST_MLFLOW_URI")
    if existing and answers(existing):
        yield existing
        return
    yield from serve_mlflow(tmp_path_factory.mktemp("mlflow-server"), "an MLflow server")


def serve_production_mlflow(what: str, workers: int = 2) -> Iterator[str]:
    """cluster/mlflow/up.sh (PostgreSQL + an MLflow server with `workers` workers) on free ports in a fresh DIR:
    yields its URI, then stops exactly it (down.sh) and removes the DIR. The DIR is world-traversable because
    PostgreSQL runs as the `postgres` user when the tests run as root."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="trainctl-mlflow-"))
    workdir.chmod(0o755)
    env = {**os.environ, "DIR": str(workdir), "PORT": str(_free_port()), "PGPORT": str(_free_port()),
           "WORKERS": str(workers), "PY": sys.executable}
    up = subprocess.run(["bash", str(ROOT / "cluster" / "mlflow" / "up.sh")], capture_output=True, text=True,
                        env=env, timeout=300)
    try:
        require(up.returncode == 0, what, f"cluster/mlflow/up.sh failed: {up.stderr[-2000:]}")
        yield f"http://127.0.0.1:{env['PORT']}"
    finally:
        subprocess.run(["bash", str(ROOT / "cluster" / "mlflow" / "down.sh")], capture_output=True, env=env,
                       timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_mlflow() -> Iterator[str]:
    """The production tracking server (`make mlflow-server`: PostgreSQL + several MLflow workers) that the SLURM
    and Ray tests log to, as a cluster's jobs do: TRAINCTL_TEST_CLUSTER_MLFLOW_URI when it answers (.ci/run starts
    one), else one started for the session."""
    from trainctl.mlflow_server import answers

    existing = os.environ.get("TRAINCTL_TEST_CLUSTER_MLFLOW_URI")
    if existing and answers(existing):
        yield existing
        return
    yield from serve_production_mlflow("the PostgreSQL-backed MLflow server")


def _cluster(kind: str, count_env: str, count: str) -> Iterator[None]:
    scripts = ROOT / "cluster" / kind
    up = subprocess.run(["bash", str(scripts / "status.sh")], capture_output=True, text=True)
    started = False
    if up.returncode != 0 and not IN_CI and os.geteuid() == 0 and shutil.which("apt-get"):
        res = subprocess.run(["bash", str(scripts / "up.sh"), count], capture_output=True, text=True, timeout=900)
        started = res.returncode == 0
        up = subprocess.run(["bash", str(scripts / "status.sh")], capture_output=True, text=True)
    target = "cluster-up" if kind == "slurm" else "ray-up"
    require(up.returncode == 0, f"the local {kind} cluster",
            f"run `make {target}` ({up.stdout.strip()} {up.stderr.strip()[-500:]})")
    yield
    if started:
        subprocess.run(["bash", str(scripts / "down.sh")], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    yield from _cluster("slurm", "NODES", os.environ.get("TRAINCTL_TEST_SLURM_NODES", "3"))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    yield from _cluster("ray", "WORKERS", "1")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([*TRAINCTL, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or ROOT)
