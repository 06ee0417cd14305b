"""What `status` and `ls` show of a run's progress and times, and how the lean reader logs in: pure logic."""

from __future__ import annotations

import base64
import math

import pytest

from trainctl import progress, store_read


def test_progress_from_latest_metrics_and_limits() -> None:
    p = progress.progress_of({"epoch": 2.0, "train/loss": 0.5}, {"epoch": 45, "train/loss": 45}, None, 5)
    assert (p["step"], p["epoch"], p["text"]) == (45, 3, "step 45, epoch 3 of 5")
    assert progress.progress_of({}, {}, 100, None)["text"] == "no step logged yet"
    assert progress.progress_of({"epoch": 0.0}, {"epoch": 7}, 100, None)["text"] == "step 7 of 100, epoch 1"
    # after fit Lightning logs the epoch counter one past the last epoch
    assert progress.progress_of({"epoch": 3.0}, {"epoch": 60}, None, 3)["epoch"] == 3
    assert progress.progress_of({"epoch": math.nan}, {"epoch": 1}, None, 3)["epoch"] is None


def test_duration_and_formats() -> None:
    assert progress.duration_s(1_000, 61_000) == 60.0
    assert progress.duration_s(1_000, None, now=11.0) == 10.0
    assert progress.duration_s(None, None) is None
    assert progress.fmt_duration(59.9) == "0m59s"
    assert progress.fmt_duration(3_725) == "1h02m05s"
    assert progress.fmt_duration(None) == "-"


def test_store_kinds() -> None:
    assert store_read.kind("http://h:5000") == store_read.kind("https://h") == "rest"
    assert store_read.kind("sqlite:////a/mlflow.db") == "sqlite"
    assert store_read.kind("file:///a/mlruns") == store_read.kind("/a/mlruns") == "client"


def test_rest_login_is_mlflows(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert "Authorization" not in store_read._headers()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    assert store_read._headers()["Authorization"] == "Bearer tok"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")  # a login wins over a token, as in MLflow
    assert store_read._headers()["Authorization"] == "Basic " + base64.b64encode(b"ada:pw").decode()
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    assert store_read._tls() is not None


def test_system_metrics_steps_are_not_training_steps() -> None:
    """A system metric's step is seconds since the run began: a 33 s run of 20 steps is at step 20."""
    steps = {"train/loss": 20, "epoch": 20, "system/vm/cpu_utilization_percentage": 31}
    assert progress.progress_of({"epoch": 1.0}, steps, None, 1)["text"] == "step 20, epoch 1 of 1"
