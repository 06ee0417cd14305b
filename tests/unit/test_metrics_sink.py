"""The metrics sink against real sockets: a server that stalls every request, one that is down, one that works."""

from __future__ import annotations

import contextlib
import math
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from trainctl.metrics import MetricsSink, json_double, upload_spool


@pytest.fixture()
def stalling_server():
    """Accepts connections and never answers (a hung tracking server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_adding_points_never_waits_for_a_stalled_server(stalling_server: str, tmp_path: Path) -> None:
    sink = MetricsSink(stalling_server, "0" * 32, tmp_path / "spool", flush_every_s=0.05)
    times = []
    for step in range(2000):
        t0 = time.perf_counter()
        sink.add({"train/loss": 1.0 / (step + 1), "grad/norm": 2.0}, step)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < 1e-3
    assert max(times) < 0.05
    spooled = sink.close(timeout_s=0.5)
    assert spooled == 4000, "undelivered points are spooled, none dropped"
    assert len((tmp_path / "spool").glob("*.jsonl").__next__().read_text().splitlines()) == 4000


def test_points_at_or_below_the_high_water_mark_are_dropped(tmp_path: Path) -> None:
    sink = MetricsSink("http://127.0.0.1:9", "0" * 32, tmp_path / "s", high_water={"loss": 9})
    sink.add({"loss": 1.0, "acc": 0.5}, 9)
    sink.add({"loss": 1.0}, 10)
    assert [(k, s) for k, _, s, _ in sink.pending] == [("acc", 9), ("loss", 10)]
    sink.close(timeout_s=0.1)


@pytest.mark.mlflow
def test_spool_uploads_later(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the down server answers at once
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.create_experiment(f"spool-{time.time()}")
    run_id = client.create_run(exp).info.run_id
    sink = MetricsSink("http://127.0.0.1:9", run_id, tmp_path / "spool", flush_every_s=0.05)
    for step in range(50):
        sink.add({"loss": float(step)}, step)
    sink.add_params({"hparams/lr": "0.1"})
    sink.add_params({"hparams/lr": "0.2", "hparams/hidden": "64"})
    assert sink.close(timeout_s=0.3) == 50
    assert upload_spool(mlflow_server, run_id, tmp_path / "spool") == 50
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(50))
    assert not list((tmp_path / "spool").glob("*.json*"))
    run = client.get_run(run_id)
    assert run.data.params == {"hparams/lr": "0.1", "hparams/hidden": "64"}, "the first value of a key stays"
    assert run.data.tags["trainctl.hparams_changed"] == "hparams/lr=0.2"
    live = MetricsSink(mlflow_server, run_id, tmp_path / "spool2", flush_every_s=0.05)
    live.add({"acc": 0.5}, 1)
    live.add_params({"hparams/hidden": "64", "hparams/note": "x"})
    assert live.close(timeout_s=10) == 0 and not (tmp_path / "spool2").exists()
    run = client.get_run(run_id)
    assert run.data.metrics["acc"] == 0.5 and run.data.params["hparams/note"] == "x"


@pytest.mark.mlflow
def test_a_restart_that_began_without_mlflow_sends_each_step_once(mlflow_server: str, tmp_path: Path) -> None:
    """Attempt 1 delivered steps 0-4 and spooled 5-14 (server away); attempt 2 resumed from step 9 while the
    server was still away: it asks for the high-water mark only once the server answers (sends 10-19), and
    `trainctl sync` then uploads only the spooled steps MLflow lacks (5-9)."""
    from mlflow import MlflowClient

    from trainctl.metrics import logged_high_water

    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = client.create_run(client.create_experiment(f"replay-{time.time()}")).info.run_id
    first = MetricsSink(mlflow_server, run_id, tmp_path / "spool", flush_every_s=0.05)
    for step in range(5):
        first.add({"loss": float(step)}, step)
    assert first.close(timeout_s=10) == 0
    away = MetricsSink("http://127.0.0.1:9", run_id, tmp_path / "spool", flush_every_s=0.05)
    for step in range(5, 15):
        away.add({"loss": float(step)}, step)
    assert away.close(timeout_s=0.2) == 10
    asked: list[int] = []

    def high_water() -> dict[str, int]:
        asked.append(1)
        return logged_high_water(mlflow_server, run_id)

    second = MetricsSink(mlflow_server, run_id, tmp_path / "spool2", flush_every_s=0.05, high_water=high_water)
    for step in range(10, 20):
        second.add({"loss": float(step)}, step)
    assert second.close(timeout_s=10) == 0 and asked == [1]
    assert upload_spool(mlflow_server, run_id, tmp_path / "spool") == 5
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(20)), "each step once"


def test_non_finite_values_are_written_as_protobuf_json_strings() -> None:
    assert [json_double(v) for v in (1.5, math.nan, math.inf, -math.inf)] == [1.5, "NaN", "Infinity", "-Infinity"]


@pytest.mark.mlflow
@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_every_point_arrives_exactly_as_logged(store: str, mlflow_server: str, tmp_path: Path) -> None:
    """The REST path (a server) and MlflowClient's path (any other store) store the same points: several full
    batches, non-finite values, steps and timestamps as given."""
    from mlflow import MlflowClient

    uri = mlflow_server if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment(f"sink-{store}-{time.time()}")).info.run_id
    sink = MetricsSink(uri, run_id, tmp_path / "spool", flush_every_s=0.05)
    odd = {7: math.nan, 8: math.inf, 9: -math.inf}
    for step in range(1200):
        sink.add({"loss": odd.get(step, 1.0 / (step + 1)), "acc": step / 1200}, step)
    assert sink.close(timeout_s=60) == 0 and sink.delivered == 2400
    loss = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in loss) == list(range(1200))
    values = {m.step: m.value for m in loss}
    # MLflow's SQL store keeps ±inf as ±DBL_MAX (sanitize_metric_value), whichever way the points came.
    assert math.isnan(values[7]) and values[8] == sys.float_info.max and values[9] == -sys.float_info.max
    assert values[3] == 0.25 and len(client.get_metric_history(run_id, "acc")) == 1200
