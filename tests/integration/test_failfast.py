"""The user's own bug fails fast; the infrastructure's failure is retried; an MLflow outage at an attempt's start
is trained through. Real jobs through the real CLI on the local backend, against real MLflow servers."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import SHORT, attempt_records, callbacks, free_port, run_cli, run_dir, run_info, steps, submit, wait_for
from mlflow import MlflowClient

pytestmark = pytest.mark.mlflow


# Four jobs that fail, submitted side by side (each followed by its own `submit`): they share the machine's
# cores, not the suite's wall time.
FAILING = {
    "step5": [*SHORT, "trainer.max_epochs=1", "checkpoint.every_n_train_steps=2",
              callbacks(("RaiseAtStep", {"step": 5, "rank": 1}))],
    "train_end": [*SHORT, "trainer.max_epochs=1", callbacks(("RaiseAtTrainEnd", {"rank": 0}))],
    "before_rendezvous": [*SHORT, "trainer.max_epochs=1", callbacks(("RaiseOnInit", {"rank": 0}))],
    "policy_fail": [*SHORT, "trainer.max_epochs=1", "fault_tolerance.on_failure=fail",
                    callbacks(("RaiseAtStep", {"step": 5, "rank": 0, "error": "network"}))],
}


@dataclass
class Ended:
    res: subprocess.CompletedProcess
    run_id: str
    elapsed: float


@pytest.fixture(scope="module")
def failed(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ended]:
    def one(name: str) -> Ended:
        t0 = time.monotonic()
        res, run_id = submit(tmp_path_factory.mktemp(name), mlflow_server, FAILING[name], timeout=500)
        assert run_id, res.stdout[-2000:] + res.stderr[-2000:]
        return Ended(res, run_id, time.monotonic() - t0)

    with concurrent.futures.ThreadPoolExecutor(len(FAILING)) as pool:
        return dict(zip(FAILING, pool.map(one, FAILING)))


def test_a_user_error_at_step_5_fails_at_once_with_its_frame(mlflow_server: str, failed: dict[str, Ended]) -> None:
    """Rank 1 raises from the user's code at step 5; rank 0 sees only the reset connection. One attempt, FAILED,
    the reason (and submit's last line) name the exception and the user's file:line; logs and the newest good
    checkpoint are in the run's artifacts."""
    res, run_id = failed["step5"].res, failed["step5"].run_id
    print(f"user error at step 5: submit -> 'ended FAILED' line in {failed['step5'].elapsed:.1f} s "
          f"(beside two other jobs)")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    reason = "user-error: rank 1: RuntimeError: injected failure at step 5 on rank 1 (at "
    assert last.startswith(f"run {run_id} ended FAILED: {reason}"), last
    assert "testing/faults.py:" in last and "in on_train_batch_end" in last, last
    assert "attempt 1 ended" not in res.stdout, "no requeue"
    rdir = run_dir(mlflow_server, run_id)
    (only,) = attempt_records(rdir)
    assert only["outcome"] == "failed" and only["step"] == 5, only
    run = run_info(mlflow_server, run_id)
    assert run.info.status == "FAILED" and run.data.tags["trainctl.state"] == "FAILED"
    assert run.data.tags["trainctl.reason"] == only["reason"] and "faults.py:" in only["reason"]
    client = MlflowClient(tracking_uri=mlflow_server)
    ckpts = [a.path for a in client.list_artifacts(run_id, "checkpoints/last")]
    assert any(p.endswith(".ckpt") for p in ckpts) and any(p.endswith(".manifest.json") for p in ckpts), ckpts
    logs = [a.path for a in client.list_artifacts(run_id, "logs")]
    assert any("_0_log" in p for p in logs) and any("_1_log" in p for p in logs), logs


def test_an_exception_in_on_train_end_ends_failed(mlflow_server: str, failed: dict[str, Ended]) -> None:
    """The user's end-of-training work failed: no requeue may 'heal' it (a resumed attempt has nothing left to
    train and never calls the hook again)."""
    res, run_id = failed["train_end"].res, failed["train_end"].run_id
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    assert len(attempt_records(run_dir(mlflow_server, run_id))) == 1
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FAILED", tags
    assert "injected failure in on_train_end" in tags["trainctl.reason"], tags
    assert tags["trainctl.reason"].endswith(" in on_train_end)"), "the user's frame"


def test_a_rank_failing_before_the_rendezvous_does_not_keep_its_peer_waiting(mlflow_server: str,
                                                                             failed: dict[str, Ended]) -> None:
    """Rank 0 raises while its objects are built; rank 1 waits for it in the rendezvous, which would time out
    only after collective_timeout_s (300 s). It reads rank 0's end record and leaves with the same verdict."""
    res, run_id = failed["before_rendezvous"].res, failed["before_rendezvous"].run_id
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    rdir = run_dir(mlflow_server, run_id)
    (only,) = attempt_records(rdir)
    assert only["outcome"] == "failed" and "injected failure while building rank 0" in only["reason"], only
    assert only["reason"].endswith(" in __init__)"), only["reason"]
    (rank1_log,) = (rdir / "logs").glob("*_1_log.err")
    rank1 = rank1_log.read_text(errors="replace")
    assert "ending this rank: rank 0: RuntimeError: injected failure while building rank 0" in rank1, rank1[-3000:]
    failed_at = json.loads((rdir / "attempts" / "0001" / "rank-0000.end.json").read_text())["time"]
    waited = rank1_log.stat().st_mtime - failed_at  # rank 1's last words are its verdict, just before it leaves
    print(f"rank 1 left {waited:.1f} s after rank 0 recorded its failure")
    assert waited < 90, "rank 1 did not wait out the 300 s rendezvous timeout"
    assert run_info(mlflow_server, run_id).data.tags["trainctl.state"] == "FAILED"


def test_on_failure_fail_ends_an_infrastructure_failure_without_a_requeue(mlflow_server: str,
                                                                          failed: dict[str, Ended]) -> None:
    """on_failure: fail: the reset connection that is otherwise retried ends the run FAILED after one attempt."""
    res, run_id = failed["policy_fail"].res, failed["policy_fail"].run_id
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    assert "attempt 1 ended" not in res.stdout, "no requeue"
    (only,) = attempt_records(run_dir(mlflow_server, run_id))
    assert only["outcome"] == "failed" and only["reason"].startswith("network: DistNetworkError: Connection reset "
                                                                     "by peer (injected at step 5 on rank 0)"), only
    run = run_info(mlflow_server, run_id)
    assert run.info.status == "FAILED" and run.data.tags["trainctl.state"] == "FAILED"
    assert run.data.tags["trainctl.reason"] == only["reason"]


def _rank0_log(rdir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((rdir / "logs").glob("*_0_log.err")))


def test_tracking_down_when_a_requeued_attempt_starts(tmp_path: Path) -> None:
    """The MLflow server goes away mid-attempt and stays away while the requeued attempt starts: that attempt
    trains on (metrics buffered), the verdicts land once the server is back, `trainctl sync` uploads what was
    spooled, and the history holds every step exactly once."""
    from trainctl.mlflow_server import answers, start

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    store = tmp_path / "store"

    def up() -> subprocess.Popen:
        proc = start(port, store, tmp_path / "server.log")
        wait_for("the MLflow server answers", lambda: answers(uri), 90)
        return proc

    server = up()
    slow = callbacks(("SlowSteps", {"seconds": 0.3}), ("SignalAtStep", {"step": 15, "signal_name": "SIGUSR2"}))
    res, run_id = submit(tmp_path / "w", uri, [*SHORT, "trainer.max_epochs=1", slow], "--detach")
    assert res.returncode == 0 and run_id, res.stderr[-2000:]
    rdir = run_dir(uri, run_id)
    try:
        wait_for("training is under way", lambda: len(steps(uri, run_id)) >= 3, 240)
        server.terminate()
        server.wait(30)
        wait_for("the requeued attempt started without MLflow",
                  lambda: "MLflow unreachable at the attempt's start" in _rank0_log(rdir), 240)
        server = up()
        wait_for("the run ended", lambda: run_info(uri, run_id).data.tags.get("trainctl.state")
                  in ("FINISHED", "FAILED", "KILLED"), 300)
        status = run_cli("status", run_id, "--tracking-uri", uri, "--json")
        assert json.loads(status.stdout)["status"] == "FINISHED", status.stdout
        first, second = attempt_records(rdir)
        assert first["outcome"] == "requeue" and first["reason"].startswith("timeout"), first
        assert second["cause"] == "timeout" and second["outcome"] == "finished", second
        tags = run_info(uri, run_id).data.tags
        assert tags["trainctl.attempt"] == "2" and tags["trainctl.attempt.2.cause"] == "timeout", tags
        sync = run_cli("sync", run_id, "--tracking-uri", uri)
        assert sync.returncode == 0, sync.stderr[-2000:]
        assert int(sync.stdout.split("uploaded ")[1].split()[0]) > 0, "attempt 1's end spooled what MLflow missed"
        assert steps(uri, run_id) == list(range(20)), "every step exactly once, across the outage and the requeue"
    finally:
        server.terminate()
        server.wait(30)
