"""The digits job on the real local SLURM cluster (cluster/slurm), through the real CLI and a real MLflow server.

Multi-node DDP (ranks on distinct SLURM nodes), a real time limit that requeues and resumes exactly, a manual
`scontrol requeue`, cancels (trainctl and scancel) that never requeue, and a node crash mid-run. Submissions
return at once (`trainctl submit` does not follow cluster jobs); the tests poll MLflow and `trainctl status`.
The time-limit job is submitted first and runs while the short tests do.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ROOT,
    attempt_records,
    callbacks,
    require,
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

from trainctl.worker.env import job_master_port

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow, pytest.mark.slow]

JOB = "jobs/digits-slurm.yaml"
# 2 epochs x 20 steps of digits on 2 ranks (40 steps), no early stop, resume checkpoints only at epoch ends and stops.
SHORT = ["trainer.max_epochs=2", "early_stopping=null", "checkpoint.every_n_train_steps=null"]
SUBMITTED: list[str] = []  # job ids this module submitted: cancelled at its end if still there
RANK_LINE = re.compile(r"^trainctl: rank (\d+)/(\d+) on node (\S+) \(SLURM job (\d+), restart (\d+)", re.M)


def _submit(workdir: Path, uri: str, sets: list[str]) -> tuple[str, str]:
    res, run_id = submit(workdir, uri, sets, job=JOB, timeout=120)
    assert res.returncode == 0 and run_id, res.stdout[-2000:] + res.stderr[-2000:]
    job = re.search(r"SLURM job (\d+)", res.stdout)
    assert job, res.stdout
    SUBMITTED.append(job.group(1))
    return run_id, job.group(1)


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout


def _hosts(nodelist: str) -> list[str]:
    return _sh("scontrol", "show", "hostnames", nodelist).split()


def _rank_lines(rdir: Path) -> list[tuple[int, int, str, str, int]]:
    """(rank, world, node, job, restart) for every rank start, from the ranks' own logs."""
    out = []
    for path in sorted((rdir / "logs").glob("*_log.err")):
        for m in RANK_LINE.finditer(path.read_text(errors="replace")):
            out.append((int(m[1]), int(m[2]), m[3], m[4], int(m[5])))
    return out


def _sacct(job: str) -> str:
    return _sh("sacct", "-D", "-j", job, "-o", "JobID%-12,State%-14,Start,End,ExitCode,NodeList%-10")


def _gone(job: str, timeout: float = 60) -> None:
    """Wait until SLURM holds the job no more. A requeued job stays in the queue (PENDING) from the moment any
    rank requeues it, and only a rank requeues: once it is gone, it cannot come back."""
    wait_for(f"SLURM job {job} gone", lambda: not _sh("squeue", "-h", "-j", job, "-o", "%T").strip(), timeout)


def _system_series(uri: str, run_id: str) -> dict[str, dict[str, list[Any]]]:
    """system/<host>/<metric> histories of the run, by host."""
    client = MlflowClient(tracking_uri=uri)
    out: dict[str, dict[str, list[Any]]] = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith("system/"):
            _, host, name = key.split("/", 2)
            out.setdefault(host, {})[name] = client.get_metric_history(run_id, key)
    return out


def _no_duplicate_step(series: dict[str, dict[str, list[Any]]]) -> None:
    for host, metrics in series.items():
        for name, history in metrics.items():
            got = [m.step for m in history]
            assert len(got) == len(set(got)), f"system/{host}/{name}: a step twice: {sorted(got)}"


def _contiguous(history: list[int]) -> bool:
    return history == list(range(history[0], history[-1] + 1))


@pytest.fixture(scope="module")
def uri(slurm_cluster: None, cluster_mlflow: str) -> Iterator[str]:
    yield cluster_mlflow
    live = [j for j in SUBMITTED if _sh("squeue", "-h", "-j", j, "-o", "%T").strip()]
    if live:  # a failed test leaves its job behind: do not let it run on
        subprocess.run(["scancel", *live], timeout=30)


@pytest.fixture(scope="module")
def time_limit_run(uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, float]:
    """A 1-minute limit: SLURM's USR2 (10 s lead; it comes up to ~30 s early) lands mid-training every attempt."""
    t0 = time.time()
    run_id, job = _submit(tmp_path_factory.mktemp("timelimit"), uri, [
        "trainer.max_epochs=3", "early_stopping=null", "checkpoint.every_n_train_steps=null",
        "resources.time_min=1", "fault_tolerance.signal_lead_s=10", "fault_tolerance.max_restarts=8",
        "tracking.system_metrics=2", callbacks(("SlowSteps", {"seconds": 1.0}))])
    return run_id, job, t0


def test_ddp_on_one_two_and_three_nodes(uri: str, time_limit_run: Any, tmp_path: Path) -> None:
    """All at once; each rank on its own SLURM node; the run records the world size and the nodes; Lightning's
    SLURMEnvironment (and its SIGUSR1 auto-requeue) is never picked, neither for DDP nor for a single rank."""
    t0 = time.time()
    runs = {n: _submit(tmp_path / f"n{n}", uri, [*SHORT, f"resources.nodes={n}", "tracking.system_metrics=1"])
            for n in (1, 2, 3)}
    for n, (run_id, job) in runs.items():
        assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 240) == "FINISHED", _sacct(job)
        tags = run_info(uri, run_id).data.tags
        assert tags["trainctl.backend"] == "slurm" and tags["trainctl.world_size"] == str(n)
        assert tags["trainctl.scheduler_job_id"] == job, tags
        assert tags["trainctl.attempt"] == "1", attempt_records(run_dir(uri, run_id))
        nodes = _hosts(tags["trainctl.hosts"])
        assert len(set(nodes)) == n, tags["trainctl.hosts"]
        lines = _rank_lines(run_dir(uri, run_id))
        assert sorted(r for r, *_ in lines) == list(range(n)) and {w for _, w, *_ in lines} == {n}
        assert {node for _, _, node, *_ in lines} == set(nodes), "one rank per node, on the job's nodes"
        system = _system_series(uri, run_id)
        assert set(system) == set(nodes), f"each node's system metrics under its own host: {sorted(system)}"
        for host, metrics in system.items():
            assert {"cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage",
                    "network_receive_megabytes"} <= set(metrics), (host, sorted(metrics))
        _no_duplicate_step(system)
        (attempt,) = attempt_records(run_dir(uri, run_id))
        per_epoch = math.ceil(math.ceil(1257 / n) / 32)  # DistributedSampler pads to ceil(1257 / ranks)
        assert attempt["step"] == 2 * per_epoch and steps(uri, run_id) == list(range(2 * per_epoch)), \
            "every step exactly once"
        status = json.loads(run_cli("status", run_id, "--tracking-uri", uri, "--json").stdout)
        assert status["status"] == "FINISHED" and status["scheduler_job_id"] == job
        logs = run_cli("logs", run_id, "--tracking-uri", uri, "--rank", str(n - 1)).stdout
        assert f"rank {n - 1}/{n} on node" in logs
        assert "auto-requeueing" not in run_cli("logs", run_id, "--tracking-uri", uri).stdout
        first = min(m.timestamp for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, "train/loss"))
        submitted = json.loads((run_dir(uri, run_id) / "scheduler.json").read_text())["submitted"]
        print(f"\n{n} node(s): sbatch → first training step {first / 1000 - submitted:.1f} s")
    print(f"1-, 2- and 3-node jobs at once: {time.time() - t0:.1f} s")


def test_time_limit_requeues_and_resumes_exactly(uri: str, time_limit_run: tuple[str, str, float]) -> None:
    run_id, job, t0 = time_limit_run
    assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 420) == "FINISHED", _sacct(job)
    rdir = run_dir(uri, run_id)
    attempts = attempt_records(rdir)
    assert len(attempts) >= 2, attempts
    tags = run_info(uri, run_id).data.tags
    assert tags["trainctl.attempt"] == str(len(attempts))
    rank0_log = "".join(p.read_text() for p in sorted((rdir / "logs").glob(f"{job}_0_log.err")))
    restored = re.findall(r"Restoring states from the checkpoint path at (\S+/resume/step-\d+\.ckpt)", rank0_log)
    for prev, nxt, ckpt in zip(attempts, attempts[1:], restored):
        # trainctl's own USR2 handler acted (submitit's would have requeued without a verdict)
        assert prev["outcome"] == "requeue" and prev["reason"].startswith("timeout"), prev
        assert nxt["cause"] == "timeout" and tags[f"trainctl.attempt.{nxt['number']}.cause"] == "timeout"
        assert ckpt.endswith(f"step-{prev['step']:09d}.ckpt"), "resumed from the step where the ranks stopped"
    assert len(restored) == len(attempts) - 1
    assert attempts[-1]["outcome"] == "finished" and attempts[-1]["step"] == 60
    assert steps(uri, run_id) == list(range(60)), "every step exactly once across the requeues"
    system = _system_series(uri, run_id)
    _no_duplicate_step(system)  # the step is seconds since the run's creation: a later attempt logs later steps
    stamps = [m.timestamp / 1000 for metrics in system.values() for m in metrics["cpu_utilization_percentage"]]
    for a in attempts:
        assert any(a["started"] <= t <= (a["ended"] or time.time()) + 5 for t in stamps), f"none from attempt {a}"
    restarts = [r for *_, r in _rank_lines(rdir)]
    assert sorted(set(restarts)) == list(range(len(attempts))), "SLURM_RESTART_COUNT 0, 1, … under one job id"
    _gone(job)
    sacct = _sacct(job)
    assert sacct.count("REQUEUED") >= len(attempts) - 1, sacct
    print(f"\ntime limit: {len(attempts)} attempts, {time.time() - t0:.0f} s from sbatch to FINISHED\n{sacct}")


def test_scontrol_requeue_resumes(uri: str, tmp_path: Path) -> None:
    run_id, job = _submit(tmp_path, uri, [*SHORT, callbacks(("SlowSteps", {"seconds": 0.5}))])
    wait_steps(uri, run_id, 10)
    t_requeue = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 240) == "FINISHED", _sacct(job)
    rdir = run_dir(uri, run_id)
    attempts = attempt_records(rdir)
    assert len(attempts) == 2, attempts
    # SIGTERM → agreed stop → requeue recorded as "preempted"; if KillWait (5 s) cut rank 0 short of its
    # verdict, the next attempt still knows it came from a requeue.
    assert attempts[1]["cause"] in ("preempted", "requeue-or-node-failure"), attempts
    tags = run_info(uri, run_id).data.tags
    assert tags["trainctl.attempt"] == "2" and tags["trainctl.attempt.2.cause"] == attempts[1]["cause"]
    history = steps(uri, run_id)
    assert len(history) == len(set(history)) and history[-1] == 39, "no duplicate step"
    assert _contiguous(history), "no gap"
    shown = run_cli("logs", run_id, "--tracking-uri", uri).stdout.splitlines()
    headers = [h.split(" (")[0] for h in shown if h.startswith("==> ")]
    wanted = [f"==> attempt {a} · rank {r} · std{s}" for a in (1, 2) for r in (0, 1) for s in ("out", "err")]
    assert headers == wanted, "the requeue appends to the same files: the markers split them"
    resumed = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "train/loss")
    first_new = min(m.timestamp for m in resumed if m.timestamp / 1000 > attempts[1]["started"])
    print(f"\nscontrol requeue → first resumed step logged: {first_new / 1000 - t_requeue:.1f} s\n{_sacct(job)}")


@pytest.fixture(scope="module")
def port_taken(uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, socket.socket]]:
    """(run id, SLURM job, the listening socket) of a 1-epoch job released while something listens on the port its
    first attempt derives. The start-up warning test asks for it so that the two short jobs run side by side; the
    port test closes the socket once its job has ended."""
    run_id, job = _submit(tmp_path_factory.mktemp("port-taken"), uri,
                          [*SHORT, "trainer.max_epochs=1", "backend.slurm.sbatch={hold: true}"])
    port = job_master_port(job, "0")
    assert port < 32768, "below Linux's default ephemeral range"
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", port))
        squatter.listen()
        subprocess.run(["scontrol", "release", job], check=True, timeout=30)
        yield run_id, job, squatter


def test_warning_during_startup_is_held_not_fatal(uri: str, port_taken: Any, tmp_path: Path) -> None:
    """USR2 while the ranks still start (default action: terminate) is held until trainctl's handler runs. (The
    port-taken job runs meanwhile.)"""
    run_id, job = _submit(tmp_path, uri, [*SHORT, "trainer.max_epochs=1", "backend.slurm.sbatch={hold: true}"])
    rdir = run_dir(uri, run_id)
    logs = [rdir / "logs" / f"{job}_{rank}_log.out" for rank in (0, 1)]
    subprocess.run(["scontrol", "release", job], check=True, timeout=30)
    sent, deadline = 0, time.monotonic() + 90
    while len(_rank_lines(rdir)) < 2 and time.monotonic() < deadline:  # until both ranks have their handlers
        # Both ranks' Pythons run (submitit's first line; the mask is set before it) and still import torch
        # and the job's code: signal the steps, as --signal does.
        if all(p.is_file() and "Starting with" in p.read_text() for p in logs):
            sent += subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, timeout=30).returncode == 0
        time.sleep(0.05)
    assert len(_rank_lines(rdir)) == 2, "a rank died of a USR2 that came during its start-up"
    assert sent >= 5, "USR2 reached the ranks while they were starting"
    assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 180) == "FINISHED", _sacct(job)
    first, second = attempt_records(rdir)
    assert first["outcome"] == "requeue" and first["reason"].startswith("timeout"), first
    assert second["cause"] == "timeout" and second["outcome"] == "finished"
    assert steps(uri, run_id) == list(range(20))


def test_master_port_taken_heals_in_one_requeue(uri: str, port_taken: tuple[str, str, socket.socket]) -> None:
    """Something else listens on the port this job's first attempt derives for its TCPStore (all local nodes
    share one host, as jobs on a shared node do): that attempt crashes with EADDRINUSE, is requeued, and the
    next attempt derives another port and finishes."""
    run_id, job, squatter = port_taken
    port = squatter.getsockname()[1]
    assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 240) == "FINISHED", _sacct(job)
    squatter.close()
    first, second = attempt_records(run_dir(uri, run_id))
    assert first["outcome"] == "requeue" and "EADDRINUSE" in first["reason"] and str(port) in first["reason"], first
    assert second["cause"] == "network" and second["outcome"] == "finished", second
    assert steps(uri, run_id) == list(range(20))


def test_cancel_and_scancel_never_requeue(uri: str, tmp_path: Path) -> None:
    slow = callbacks(("SlowSteps", {"seconds": 0.5}))
    (a, job_a), (b, job_b) = (_submit(tmp_path / n, uri, [*SHORT, "trainer.max_epochs=5", slow]) for n in "ab")
    wait_steps(uri, a, 5)
    wait_steps(uri, b, 5)
    subprocess.run(["scancel", job_b], check=True, timeout=30)
    res = run_cli("cancel", a, "--tracking-uri", uri)  # returns once SLURM holds no process of the job
    assert res.returncode == 0 and f"SLURM job {job_a} ended" in res.stdout, res.stdout + res.stderr
    for run_id, job in ((a, job_a), (b, job_b)):
        _gone(job)
        sacct = _sacct(job)
        assert "CANCELLED" in sacct and "REQUEUED" not in sacct, sacct
        assert wait_state(uri, run_id, {"KILLED", "FAILED", "FINISHED"}, 60) == "KILLED"
        rdir = run_dir(uri, run_id)
        (attempt,) = attempt_records(rdir)  # no second attempt
        # SIGTERM → the ranks agree within a step (0.5 s here, the job still in its first epoch), save, learn that
        # the job is cancelled (the run KILLED, or SLURM's CANCELLED) and end it killed, all within KillWait (5 s
        # on the local cluster).
        logs = "".join(p.read_text() for p in (rdir / "logs").glob("*_log.err"))
        assert "attempt ended killed" in logs, logs[-2000:]
        assert attempt["outcome"] == "killed" and attempt["ended"] is not None and attempt["step"], attempt
    assert "trainctl cancel" in attempt_records(run_dir(uri, a))[0]["reason"]
    assert "scheduler" in run_info(uri, b).data.tags["trainctl.reason"], "an outside scancel is reported as such"


def test_node_crash_requeues_on_the_remaining_nodes(uri: str, tmp_path: Path) -> None:
    """3-node cluster, 2-node job (exclusive, so no one else's tasks die): kill rank 1's node mid-run."""
    wanted = int((Path(os.environ.get("TRAINCTL_SLURM_RUN_DIR", "/tmp/trainctl-slurm")) / "nodes").read_text())
    require(wanted >= 3, "a 3-node SLURM cluster", "make cluster-up NODES=3")
    run_id, job = _submit(tmp_path, uri, [
        *SHORT, "fault_tolerance.collective_timeout_s=20",
        "backend.slurm.sbatch={exclusive: true}", callbacks(("SlowSteps", {"seconds": 0.3}))])
    wait_steps(uri, run_id, 8)
    rdir = run_dir(uri, run_id)
    victim = next(node for rank, _, node, *_ in _rank_lines(rdir) if rank == 1)
    t_kill = time.time()
    try:
        subprocess.run(["bash", "cluster/slurm/kill-node.sh", victim], cwd=ROOT, check=True, timeout=30)
        assert wait_state(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, 240) == "FINISHED", _sacct(job)
    finally:
        subprocess.run(["bash", "cluster/slurm/up.sh", str(wanted)], cwd=ROOT, capture_output=True, timeout=120)
    attempts = attempt_records(rdir)
    assert len(attempts) == 2 and attempts[1]["cause"] in ("rank-lost", "network", "requeue-or-node-failure"), attempts
    tags = run_info(uri, run_id).data.tags
    assert victim not in _hosts(tags["trainctl.hosts"]) and len(_hosts(tags["trainctl.hosts"])) == 2
    history = steps(uri, run_id)
    assert history == list(range(40)), "every step once, also across a crash"
    print(f"\nnode {victim} killed → FINISHED in {time.time() - t_kill:.0f} s; attempt 2 started "
          f"{attempts[1]['started'] - t_kill:.0f} s after the kill\n{_sacct(job)}")
