"""Shared helpers for the integration and fault tests: run real jobs through the real CLI, read MLflow, wait on
observable state with a bound. tests/conftest.py builds its fixtures from these; tests import them from here.

torch and MLflow are imported where they are used: conftest imports this module for every test, unit ones too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([*TRAINCTL, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or ROOT)


def serve_mlflow(workdir: Path, what: str, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """trainctl's lean MLflow server (plus extra_args / extra_env) on a free port: yields its URI, then stops it."""
    from trainctl.mlflow_server import answers, command, environment

    port = free_port()
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


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)



JOB = "jobs/digits.yaml"
# The tag worker/speedups.py records: `make test-stock` runs the `stock` tests with TRAINCTL_SPEEDUPS=0.
SPEEDUPS = "off: TRAINCTL_SPEEDUPS=0" if os.environ.get("TRAINCTL_SPEEDUPS") == "0" else "on: "
# A short deterministic digits job: 3 epochs x 20 steps on 2 ranks, no early stop, no periodic checkpoint.
SHORT = ["trainer.max_epochs=3", "early_stopping=null", "checkpoint.every_n_train_steps=null"]


def submit(workdir: Path, uri: str, sets: list[str], *extra: str, timeout: float = 300, job: str = JOB
           ) -> tuple[Any, str | None]:
    args = ["submit", job, "--set", f"workdir={workdir}", "--set", f"tracking.uri={uri}"]
    for s in sets:
        args += ["--set", s]
    res = run_cli(*args, *extra, timeout=timeout)
    match = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout)
    return res, match.group(1) if match else None


def callbacks(*items: tuple[str, dict[str, Any]]) -> str:
    specs = [{"class_path": f"trainctl.testing.faults.{name}", "init_args": args} for name, args in items]
    return f"callbacks={json.dumps(specs)}"


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def run_info(uri: str, run_id: str) -> Any:
    return client(uri).get_run(run_id)


def steps(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))


def run_dir(uri: str, run_id: str) -> Path:
    return Path(run_info(uri, run_id).data.tags["trainctl.run_dir"])


def attempt_records(rdir: Path) -> list[dict[str, Any]]:
    """The run's attempt records (rundir.Attempts), oldest first."""
    return [json.loads(p.read_text()) for p in sorted((rdir / "attempts").glob("*.json"))]


def final_checkpoint(rdir: Path) -> dict[str, Any]:
    import torch

    newest = sorted(glob.glob(str(rdir / "checkpoints" / "resume" / "step-*.ckpt")))[-1]
    return torch.load(newest, map_location="cpu", weights_only=False)


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bitwise: weights, optimizer state, LR scheduler, step."""
    import torch

    assert a["global_step"] == b["global_step"]
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), f"weights differ: {key}"
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for idx, state in sa["state"].items():
            for name, value in state.items():
                other = sb["state"][idx][name]
                assert torch.equal(value, other) if torch.is_tensor(value) else value == other, f"optimizer {name}"
    assert a["lr_schedulers"] == b["lr_schedulers"]


def wait_state(uri: str, run_id: str, states: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = run_cli("status", run_id, "--tracking-uri", uri, "--json")
        if res.returncode == 0:
            state = json.loads(res.stdout)["status"]
            if state in states:
                return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not reach {states} in {timeout} s")


def wait_steps(uri: str, run_id: str, n: int, timeout: float = 300) -> float:
    """Wait until the run holds n train/loss points (training is under way), bounded; returns when (time.time())."""
    mlflow = client(uri)

    def logged() -> float | None:
        try:
            return time.time() if len(mlflow.get_metric_history(run_id, "train/loss")) >= n else None
        except Exception:  # the metric does not exist yet
            return None

    return wait_for(f"run {run_id} logging {n} steps", logged, timeout, every=0.3)


def serve_production_mlflow(what: str, workers: int = 2) -> Iterator[str]:
    """cluster/mlflow/up.sh (PostgreSQL + an MLflow server with `workers` workers) on free ports in a fresh DIR:
    yields its URI, then stops exactly it (down.sh) and removes the DIR. The DIR is world-traversable because
    PostgreSQL runs as the `postgres` user when the tests run as root."""
    workdir = Path(tempfile.mkdtemp(prefix="trainctl-mlflow-"))
    workdir.chmod(0o755)
    env = {**os.environ, "DIR": str(workdir), "PORT": str(free_port()), "PGPORT": str(free_port()),
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
