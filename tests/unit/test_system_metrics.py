"""System metrics: the key of each node, the step clock, the spec field, and real monitors against a real server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from trainctl.injob import RankInfo
from trainctl.metrics import upload_spool
from trainctl.worker import system_metrics
from trainctl.worker.system_metrics import OFF, StepClock, SystemMetrics, key_prefix

from .spec_helpers import digits_raw, mutate, only_problem

HOST = socket.gethostname()


def test_each_host_has_its_own_keys_in_mlflows_node_id_form() -> None:
    assert key_prefix("n1") == "system/n1/"
    assert key_prefix("gpu-07.cluster.example") == "system/gpu-07.cluster.example/"
    assert key_prefix("a/b:c") == "system/a_b_c/", "a host never adds a level or a character MLflow refuses"
    assert key_prefix("") == "system/host/"


def test_steps_are_seconds_since_the_run_was_created_and_never_repeat() -> None:
    t0 = 1_000_000.0
    clock = StepClock(t0)
    assert [clock.step(t0 + dt) for dt in (0.2, 0.7, 5.1, 5.9, 3.0)] == [0, 1, 5, 6, 7]
    # the next attempt of the job counts from the same creation time, later: its steps follow the earlier ones
    assert StepClock(t0).step(t0 + 60.4) == 60
    assert StepClock(t0).step(t0 - 2) == 0, "a node whose clock is behind the submit host's starts at 0"


def test_spec_field_default_off_and_the_sub_second_hint() -> None:
    from trainctl.spec import parse_spec

    assert parse_spec(digits_raw(), check_classes=False).tracking.system_metrics == 10.0
    for off in (0, None):
        assert parse_spec(mutate(digits_raw(), "tracking.system_metrics", off), check_classes=False
                          ).tracking.system_metrics in (0, None)
    p = only_problem(mutate(digits_raw(), "tracking.system_metrics", 0.5), check_classes=False)
    assert p.path == "tracking.system_metrics" and "below the 1 s" in p.message and "0 for none" in p.hint
    p = only_problem(mutate(digits_raw(), "tracking.system_metrics", -3), check_classes=False)
    assert "out of range" in p.message


def _rank(local: int) -> RankInfo:
    return RankInfo(global_rank=local, local_rank=local, world_size=2, node_rank=0, num_nodes=1, host=HOST,
                    scheduler_job_id="1")


def test_only_local_rank_zero_samples_and_off_starts_nothing(tmp_path: Path) -> None:
    from trainctl.rundir import JobFile

    job = JobFile(run_id="0" * 32, tracking_uri="http://127.0.0.1:9", backend="local", spec={})
    assert system_metrics.start(10.0, job, _rank(1), tmp_path) is OFF
    assert system_metrics.start(0.0, job, _rank(0), tmp_path) is OFF
    assert system_metrics.start(None, job, _rank(0), tmp_path) is OFF
    OFF.stop()


def _new_run(uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client.create_run(client.create_experiment(f"system-{time.time()}")).info.run_id


def _history(uri: str, run_id: str) -> dict[str, list[int]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k))
            for k in client.get_run(run_id).data.metrics}


def _wait_next_second(clock_t0: float, after: int, bound_s: float = 5.0) -> None:
    deadline = time.monotonic() + bound_s
    while int(time.time() - clock_t0) <= after and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.mlflow
def test_two_attempts_log_every_sample_once_into_one_run(mlflow_server: str, tmp_path: Path) -> None:
    """Real collectors (psutil) to a real server: CPU, memory, disk and network under system/<host>/; a second
    monitor (the requeued attempt) continues each series after the first one's steps."""
    uri = mlflow_server
    run_id = _new_run(uri)
    t0 = time.time() - 3
    first = SystemMetrics(uri, run_id, HOST, 1.0, t0, tmp_path / "spool").start()
    deadline = time.monotonic() + 60
    while first.samples < 2 and time.monotonic() < deadline:  # one on its interval, then the last one at stop
        time.sleep(0.05)
    first.stop(timeout_s=30)
    history = _history(uri, run_id)
    prefix = key_prefix(HOST)
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage",
                 "network_receive_megabytes"):
        assert prefix + name in history, sorted(history)
    assert all(k.startswith(prefix) for k in history)
    cpu = history[prefix + "cpu_utilization_percentage"]
    assert len(cpu) == first.samples >= 3 and len(set(cpu)) == len(cpu) and cpu[0] >= 3
    _wait_next_second(t0, cpu[-1])
    second = SystemMetrics(uri, run_id, HOST, 1.0, t0, tmp_path / "spool").start()
    second.stop(timeout_s=30)
    again = _history(uri, run_id)[prefix + "cpu_utilization_percentage"]
    assert again[: len(cpu)] == cpu and len(again) == len(cpu) + 1 and again[-1] > cpu[-1]
    assert not (tmp_path / "spool").exists()


@pytest.mark.mlflow
def test_points_mlflow_did_not_take_are_spooled_under_the_hosts_name(mlflow_server: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the down server answers at once
    mon = SystemMetrics("http://127.0.0.1:9", "0" * 32, "n2", 60.0, time.time(), tmp_path / "spool").start()
    mon.stop(timeout_s=0.5)
    (spooled,) = (tmp_path / "spool").glob("metrics-*.jsonl")
    assert spooled.name.endswith("-n2.jsonl"), "two nodes spooling in the same millisecond keep both files"
    run_id = _new_run(mlflow_server)
    assert upload_spool(mlflow_server, run_id, tmp_path / "spool") > 0
    assert "system/n2/cpu_utilization_percentage" in _history(mlflow_server, run_id)
