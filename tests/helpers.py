"""Shared helpers for integration and fault tests: run real jobs through the real CLI, read MLflow."""

from __future__ import annotations

import glob
import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from conftest import run_cli
from mlflow import MlflowClient

JOB = "jobs/digits.yaml"
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


def run_info(uri: str, run_id: str) -> Any:
    return MlflowClient(tracking_uri=uri).get_run(run_id)


def steps(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def run_dir(uri: str, run_id: str) -> Path:
    return Path(run_info(uri, run_id).data.tags["trainctl.run_dir"])


def final_checkpoint(rdir: Path) -> dict[str, Any]:
    newest = sorted(glob.glob(str(rdir / "checkpoints" / "resume" / "step-*.ckpt")))[-1]
    return torch.load(newest, map_location="cpu", weights_only=False)


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bitwise: weights, optimizer state, LR scheduler, step."""
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


def wait_steps(uri: str, run_id: str, n: int, timeout: float = 300) -> None:
    """Wait until the run holds n train/loss points (training is under way), bounded."""
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(client.get_metric_history(run_id, "train/loss")) >= n:
                return
        except Exception:  # the metric does not exist yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not log {n} steps in {timeout} s")
