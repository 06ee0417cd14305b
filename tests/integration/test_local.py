"""The digits job through the real CLI, the local launcher (submitit), 2 gloo ranks and a real MLflow server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    SHORT,
    SPEEDUPS,
    TRAINCTL,
    attempt_records,
    callbacks,
    final_checkpoint,
    free_port,
    run_cli,
    run_dir,
    run_info,
    steps,
    submit,
    wait_for,
    wait_state,
    wait_steps,
)
from mlflow import MlflowClient

from trainctl.worker.system_metrics import key_prefix

pytestmark = pytest.mark.mlflow


@pytest.fixture(scope="module")
def digits_run(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, float]:
    """The full example job, once: the acceptance run of the walking skeleton."""
    workdir = tmp_path_factory.mktemp("digits")
    t0 = time.monotonic()
    res, run_id = submit(workdir, mlflow_server, [])
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert run_id
    return run_id, workdir, wall


@dataclass
class Requeued:
    run_id: str
    submit: subprocess.CompletedProcess  # the following `submit`
    follow: subprocess.CompletedProcess  # `logs -f`, started as soon as submit printed the run id


@pytest.fixture(scope="module")
def requeued(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Requeued:
    """One job that a network error at step 25 requeues once, its user code printing a line every step: `submit`
    follows it and `logs -f` follows it at the same time (two readers, one job)."""
    workdir = tmp_path_factory.mktemp("requeued")
    sets = [*SHORT, "checkpoint.every_n_train_steps=10", f"workdir={workdir}", f"tracking.uri={mlflow_server}",
            callbacks(("RaiseAtStep", {"step": 25, "rank": 0, "error": "network"}), ("PrintEveryStep", {}))]
    args = [*TRAINCTL, "submit", "jobs/digits.yaml", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "TRAINCTL_PROGRESS_S": "1", "PYTHONUNBUFFERED": "1"}
    out, err = workdir / "submit.out", workdir / "submit.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fo, stderr=fe, text=True)
    try:
        found = wait_for("submit's run id", lambda: re.search(r"run id:\s+([0-9a-f]{32})", out.read_text()), 180)
        follow = run_cli("logs", found.group(1), "-f", "--tracking-uri", mlflow_server, timeout=400)
        code = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
    submitted = subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())
    return Requeued(found.group(1), submitted, follow)


@pytest.mark.stock
def test_digits_job_lands_in_mlflow(mlflow_server: str, digits_run: tuple[str, Path, float]) -> None:
    run_id, _, _ = digits_run
    run = run_info(mlflow_server, run_id)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["trainctl.state"] == "FINISHED"
    assert tags["trainctl.backend"] == "local"
    assert tags["trainctl.world_size"] == "2"
    assert tags["trainctl.attempt"] == "1" and tags["trainctl.attempt.1.cause"] == "first"
    assert tags["trainctl.scheduler_job_id"] and tags["trainctl.hosts"] and tags["trainctl.version"]
    assert tags["trainctl.speedups"].startswith(SPEEDUPS) and "trainctl.not_resumable" not in tags
    assert params["model.class_path"] == "trainctl.examples.digits.DigitsClassifier"
    assert params["resources.devices_per_node"] == "2"
    assert metrics["val/acc"] >= 0.95, metrics
    assert metrics["test/acc"] >= 0.9, metrics
    assert "grad/norm" in metrics
    node = key_prefix(tags["trainctl.hosts"])  # the local backend: one node, this machine; 10 s by default
    assert {"cpu_utilization_percentage", "system_memory_usage_percentage", "disk_usage_percentage"} <= \
        {k.removeprefix(node) for k in metrics}, "the node's last sample, at least"
    history = steps(mlflow_server, run_id)
    assert history == list(range(history[0], history[-1] + 1)), "train/loss: every step exactly once"
    client = MlflowClient(tracking_uri=mlflow_server)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"spec.yaml", "checkpoints", "logs"} <= top
    last = [a.path for a in client.list_artifacts(run_id, "checkpoints/last")]
    best = [a.path for a in client.list_artifacts(run_id, "checkpoints/best")]
    assert any(p.endswith(".ckpt") for p in last) and any(p.endswith(".ckpt") for p in best)
    logs = [a.path for a in client.list_artifacts(run_id, "logs")]
    assert any("_0_log" in p for p in logs) and any("_1_log" in p for p in logs)


def test_status_json_and_ls(mlflow_server: str, digits_run: tuple[str, Path, float]) -> None:
    run_id, _, _ = digits_run
    res = run_cli("status", run_id, "--tracking-uri", mlflow_server, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["run_id"] == run_id and out["status"] == "FINISHED" and out["backend"] == "local"
    assert out["metrics"]["val/acc"] >= 0.95
    assert run_id in run_cli("ls", "--tracking-uri", mlflow_server).stdout
    logs = run_cli("logs", run_id[:10], "--tracking-uri", mlflow_server)
    assert logs.returncode == 0 and "rank 1" in logs.stdout


def test_best_checkpoint_loads_and_resume_forks(mlflow_server: str, digits_run: tuple[str, Path, float]) -> None:
    from trainctl.examples.digits import DigitsClassifier

    run_id, _, _ = digits_run
    best = sorted((run_dir(mlflow_server, run_id) / "checkpoints" / "best").glob("*.ckpt"))
    assert best
    model = DigitsClassifier.load_from_checkpoint(best[-1], map_location="cpu", weights_only=False)
    assert model.hparams.hidden == 128
    res = run_cli("resume", run_id, "--from", "best", "--set", "trainer.max_epochs=17", "--tracking-uri",
                  mlflow_server, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    new_id = next(w for w in res.stdout.split() if len(w) == 32 and w != run_id)
    child = run_info(mlflow_server, new_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id
    assert child.data.tags["trainctl.state"] == "FINISHED"
    assert "trainer.max_epochs=17" in child.data.tags["trainctl.resume_overrides"]


def test_resume_last_continues_the_same_run(mlflow_server: str, tmp_path: Path) -> None:
    res, run_id = submit(tmp_path, mlflow_server, [*SHORT, "trainer.max_epochs=1", "data.init_args.num_workers=2"])
    assert res.returncode == 0 and run_id, res.stderr[-2000:]
    before = steps(mlflow_server, run_id)
    res = run_cli("resume", run_id, "--set", "trainer.max_epochs=3", "--tracking-uri", mlflow_server, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    after = steps(mlflow_server, run_id)
    assert after == list(range(after[0], after[-1] + 1)) and len(after) > len(before)
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.attempt.2.cause"] == "resume"
    # keep_resume (2) counts across attempts: of the saves at steps 20 (the first attempt's), 40, 60 the two newest
    # stay
    assert [p.name for p in sorted((run_dir(mlflow_server, run_id) / "checkpoints" / "resume").glob("*.ckpt"))] \
        == ["step-000000040.ckpt", "step-000000060.ckpt"]
    # checkpoints/last holds the newest checkpoint only, under a fixed name
    client = MlflowClient(tracking_uri=mlflow_server)
    last = {a.path for a in client.list_artifacts(run_id, "checkpoints/last")}
    assert last == {"checkpoints/last/last.ckpt", "checkpoints/last/last.ckpt.manifest.json"}
    got = client.download_artifacts(run_id, "checkpoints/last/last.ckpt.manifest.json", str(tmp_path))
    assert json.loads(Path(got).read_text())["global_step"] == 60
    assert run_cli("resume", run_id, "--from", "/nonexistent.ckpt", "--tracking-uri", mlflow_server).returncode == 2
    # Loader workers came from each rank's forkserver in both attempts, none forked beside the rank's threads;
    # the server was a fork of the rank made at its start (no interpreter of its own, nothing preloaded).
    logs = run_cli("logs", run_id, "--tracking-uri", mlflow_server).stdout
    assert logs.count("loader workers start from a forkserver") == 4, logs[-3000:]
    assert "start by fork" not in logs and "preloading" not in logs, logs[-3000:]


def test_early_stopping_stops_every_rank(mlflow_server: str, tmp_path: Path) -> None:
    res, run_id = submit(tmp_path, mlflow_server, ["trainer.max_epochs=30", "early_stopping.patience=0",
                                                   "early_stopping.min_delta=10.0"])
    assert res.returncode == 0, res.stderr[-2000:]
    ckpt = final_checkpoint(run_dir(mlflow_server, run_id))
    assert ckpt["epoch"] < 5, "stopped early"
    assert run_info(mlflow_server, run_id).data.tags["trainctl.state"] == "FINISHED"


def test_stop_wanted_by_one_rank_stops_all(mlflow_server: str, tmp_path: Path) -> None:
    """A user callback that sets should_stop on rank 1 only: plain Lightning hangs; trainctl stops both ranks."""
    res, run_id = submit(tmp_path, mlflow_server, [*SHORT, callbacks(("StopOnRank", {"step": 25, "rank": 1}))],
                         timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert final_checkpoint(run_dir(mlflow_server, run_id))["global_step"] < 60


def test_crash_requeues_and_finishes_in_the_same_run(mlflow_server: str, requeued: Requeued) -> None:
    """An infrastructure failure (the DistNetworkError of a reset connection) is retried; submit says so."""
    res, run_id = requeued.submit, requeued.run_id
    assert res.returncode == 0, res.stdout[-3000:]
    assert "attempt 1 ended: network (DistNetworkError: Connection reset by peer (injected at step 25 on rank 0)); " \
           "requeue 2/4\n" in res.stdout, res.stdout[-3000:]
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.attempt"] == "2"
    assert tags["trainctl.attempt.2.cause"] == "network"
    history = steps(mlflow_server, run_id)
    assert history == list(range(history[0], 60)), "no duplicate and no gap across the requeue"


def test_two_jobs_at_once_and_cancel(mlflow_server: str, tmp_path: Path) -> None:
    """Two jobs on this host at once (own rendezvous ports); cancelling one ends it KILLED, never requeued."""
    long_job = [*SHORT, callbacks(("SlowSteps", {"seconds": 1.0}))]
    res_a, a = submit(tmp_path / "a", mlflow_server, long_job, "--detach")
    res_b, b = submit(tmp_path / "b", mlflow_server, [*SHORT, "trainer.max_epochs=1"], "--detach")
    assert res_a.returncode == 0 and res_b.returncode == 0 and a and b
    assert wait_state(mlflow_server, a, {"RUNNING", "FINISHED", "FAILED"}, 180) == "RUNNING"
    cancel = run_cli("cancel", a, "--tracking-uri", mlflow_server)
    assert cancel.returncode == 0, cancel.stderr
    assert wait_state(mlflow_server, b, {"FINISHED", "FAILED"}, 300) == "FINISHED"
    rdir_a = run_dir(mlflow_server, a)
    (attempt,) = wait_for("job a's verdict", lambda: [x for x in attempt_records(rdir_a) if x["outcome"]], 60)
    assert attempt["outcome"] == "killed", attempt
    tags = run_info(mlflow_server, a).data.tags
    assert tags["trainctl.state"] == "KILLED"
    assert tags.get("trainctl.attempt", "1") == "1", "a cancel never requeues"
    assert run_info(mlflow_server, a).info.status == "KILLED"


def test_ctrl_c_cancels_and_marks_killed(mlflow_server: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [*TRAINCTL, "submit", "jobs/digits.yaml", "--set", f"workdir={tmp_path}", "--set",
            f"tracking.uri={mlflow_server}", "--set", "trainer.max_epochs=50",
            "--set", callbacks(("SlowSteps", {"seconds": 0.05}))]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_id = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("run id:"):
            run_id = line.split()[-1]
        if "Starting with 2 processes" in line or ("train" in line.lower() and run_id):
            break
    assert run_id, "submit printed no run id"
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # the follower never blocks on a full pipe
    wait_steps(mlflow_server, run_id, 2)  # training is under way
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    assert run_id and run_info(mlflow_server, run_id).data.tags["trainctl.state"] == "KILLED"


def test_loader_trainctl_cannot_rebuild_is_tagged(mlflow_server: str, tmp_path: Path) -> None:
    """A training loader with its own batch sampler is left to Lightning (a resume restarts its epoch): the run
    says so in a tag, and the job still trains and finishes."""
    res, run_id = submit(tmp_path, mlflow_server, [*SHORT, "trainer.max_epochs=1", "tracking.system_metrics=0",
                                                   "data.class_path=trainctl.testing.loaders.BatchSamplerDigits"])
    assert res.returncode == 0 and run_id, res.stdout[-2000:] + res.stderr[-2000:]
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED"
    assert tags["trainctl.not_resumable"] == "train_dataloader: a custom batch sampler", tags
    logs = "".join(p.read_text() for p in (run_dir(mlflow_server, run_id) / "logs").glob("*_0_log.err"))
    assert "train_dataloader returns a custom batch sampler: trainctl leaves it to Lightning" in logs


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    res = run_cli("submit", "jobs/digits.yaml", "--dry-run", "--set", f"workdir={tmp_path}/w")
    assert res.returncode == 0 and "LocalExecutor" in res.stdout
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path, str]]:
    """(uri, run id, workdir, submit's stderr) of a 1-epoch job, system metrics off, whose module and data are written
    against `lightning.pytorch` (the digits example's code), tracked at a port of this machine where nothing
    answered: submit started a server there, stopped after the module."""
    workdir = tmp_path_factory.mktemp("own-server")
    uri = f"http://127.0.0.1:{free_port()}"
    res, run_id = submit(workdir, uri, [*SHORT, "trainer.max_epochs=1", "tracking.system_metrics=0",
                                        "model.class_path=trainctl.examples.digits_lightning.DigitsClassifier",
                                        "data.class_path=trainctl.examples.digits_lightning.DigitsDataModule"])
    started = re.search(r"started an MLflow server for \S+ \(pid (\d+)", res.stderr)
    try:
        assert res.returncode == 0 and run_id and started, res.stdout[-2000:] + res.stderr[-2000:]
        yield uri, run_id, workdir, res.stderr
    finally:
        if started:
            os.killpg(int(started.group(1)), signal.SIGTERM)


def test_submit_starts_a_missing_local_server(own_server: tuple[str, str, Path, str]) -> None:
    """tracking.uri on a port of this machine where nothing answers: submit serves it (as `make mlflow` would)."""
    from trainctl.mlflow_server import answers

    uri, run_id, workdir, _ = own_server
    assert answers(uri), "the server outlives the command"
    assert run_info(uri, run_id).data.tags["trainctl.state"] == "FINISHED"
    assert (workdir / "mlflow.db").is_file(), "it serves the workdir's store, like make mlflow"


def test_lightning_namespace_module(own_server: tuple[str, str, Path, str]) -> None:
    """A module written against `lightning.pytorch` (not `pytorch_lightning`) gets a Trainer of its namespace."""
    uri, run_id, _, _ = own_server
    run = run_info(uri, run_id)
    assert run.data.tags["trainctl.state"] == "FINISHED"
    assert "train/loss" in run.data.metrics and not [k for k in run.data.metrics if k.startswith("system/")], \
        "system metrics off: not one sample (on, every node logs at least its last one)"


MARK_LINE = re.compile(r"mark pid=\d+ step=\d+ 💡 █{150} end")


def test_logs_follow_across_a_requeue(mlflow_server: str, requeued: Requeued) -> None:
    """`logs -f` on a job that requeues once: a banner per attempt, progress lines, every line of the user's
    (multibyte, unflushed) output exactly once and whole, the run's state as exit code; then `logs` in order."""
    rid, follow = requeued.run_id, requeued.follow
    assert follow.returncode == 0, follow.stdout[-3000:] + follow.stderr[-2000:]
    out = follow.stdout.splitlines()
    assert out.count("── attempt 1 · cause first ──") == 1, follow.stdout[:3000]
    assert out.count("── attempt 2 · cause network · resumed at step 20 ──") == 1, follow.stdout[-4000:]
    ended = [i for i, x in enumerate(out) if x.startswith("attempt 1 ended: network (")]
    assert len(ended) == 1 and ended[0] < out.index("── attempt 2 · cause network · resumed at step 20 ──")
    assert sum(x.startswith("  » epoch 3/3 done · step 60/60") for x in out) == 1, follow.stdout[-4000:]
    assert any(" samples/s · " in x and "train/loss" in x for x in out)
    assert out[-1].startswith(f"run {rid} ended FINISHED") and sum(x.startswith(f"run {rid} ended") for x in out) == 1
    assert out[-3].startswith("final: ") and "val/acc" in out[-3] and "system/" not in out[-3], follow.stdout[-3000:]
    assert out[-2] == f"more:  trainctl status {rid} · trainctl logs {rid} · UI: {mlflow_server}"
    rdir = run_dir(mlflow_server, rid)
    written = [line for f in sorted((rdir / "logs").glob("*_0_log.out"))
               for line in f.read_bytes().decode().splitlines() if line.startswith("mark ")]
    shown = [x.removeprefix("  | ") for x in out if "mark pid=" in x]
    assert len(written) >= 60 and sorted(shown) == sorted(written), "every line once, none cut"
    assert len(set(shown)) == len(shown) and all(MARK_LINE.fullmatch(x) for x in shown)
    for bad in (["--rank", "7"], ["--attempt", "9"]):
        refused = run_cli("logs", rid, *bad, "--tracking-uri", mlflow_server)
        assert refused.returncode == 2 and bad[0] in refused.stderr and "HINT" in refused.stderr, refused.stderr
    whole = run_cli("logs", rid, "--tracking-uri", mlflow_server)
    headers = [h for h in whole.stdout.splitlines() if h.startswith("==> ")]
    assert [h.split(" (")[0] for h in headers] == [
        f"==> attempt {a} · rank {r} · std{s}" for a in (1, 2) for r in (0, 1) for s in ("out", "err")]
    assert whole.stdout.count("UserWarning: user warning: kept ✓") == 1 and "💡 Tip:" not in whole.stdout
    assert "INFO submitit:" not in whole.stdout, "submitit's records once, through its own handler"
    assert whole.stdout.count("`weights_only` was not set") <= 4, "at most once per attempt and rank"
