"""Session services for the tests: a real MLflow server, SLURM cluster and Ray cluster; and how `make test` shares
the tests among its pytest-xdist workers.

Each fixture reuses a running instance and stops only what it started. A test that needs a service that is
missing skips on a developer machine, but fails when CI=true: skips are not passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import IN_CI, ROOT, require, serve_mlflow, serve_production_mlflow

# `make test` runs two pytest-xdist workers. A work unit (one worker runs its tests one after another) is a cluster's
# folder for the tests that use a cluster, a file otherwise: the SLURM tests (tests/slurm) and the Ray tests
# (tests/ray) share one cluster, some take its nodes down and several need all of them at once; every other file is
# a unit of its own, so that its module fixtures (a reference run, a shared job) are made once.
CLUSTER_DIRS = ("tests/slurm/", "tests/ray/")


def work_unit(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return next((folder for folder in CLUSTER_DIRS if path.startswith(folder)), path)


def _tier(unit: str) -> int:
    """Units are handed out in this order: the clusters' first (they wait on a scheduler most and so overlap best
    with the CPU-bound local jobs), then the faults and integration files, the unit tests last (they fill the gaps
    at the end)."""
    if unit in CLUSTER_DIRS:
        return 0
    return 1 if unit.startswith(("tests/faults/", "tests/integration/")) else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The work units in tier order; collection order within a tier (a stable sort)."""
    items.sort(key=lambda item: _tier(work_unit(item.nodeid)))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling with `work_unit` as the scope (its `loadgroup` marks do not reach the scheduler
    under pytest 9, which no longer lets a plugin rename a test's id)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


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
