"""Session services for the tests: a real MLflow server, SLURM cluster and Ray cluster.

Each fixture reuses a running instance and stops only what it started. A test that needs a service that is
missing skips on a developer machine, but fails when CI=true: skips are not passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import IN_CI, ROOT, require, serve_mlflow, serve_production_mlflow


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
