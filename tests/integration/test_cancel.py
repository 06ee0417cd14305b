"""`trainctl cancel` ends a local job whatever shell started it: under nohup, from a background shell (both hand
their children SIGINT ignored), or detached. Real jobs, real signals, a real MLflow server.

After each cancel no process of the job is left (its controller, its ranks, anything in its process group), the
run is KILLED, the last attempt is closed `killed` at the step the ranks saved, the logs and that checkpoint are
in the run's artifacts, and the tags of the ranks' verdict (trainctl.speedups) are on the run while its state
and reason stay the cancel's. A fourth job, one of whose ranks hangs, shows the escalation: after the grace,
SIGTERM then SIGKILL of its process group, and the attempt closed `killed` by the cancel itself. The jobs run
side by side to keep the test short.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import JOB, ROOT, SHORT, TRAINCTL, callbacks, run_cli, run_info, wait_steps
from mlflow import MlflowClient

pytestmark = pytest.mark.mlflow

# Long enough that it is still training when cancelled, even on a loaded machine (200 steps of >= 0.5 s).
SLOW = [*SHORT, "trainer.max_epochs=10", callbacks(("SlowSteps", {"seconds": 0.5}))]
HUNG = [*SHORT, "trainer.max_epochs=10", callbacks(("HangAtStep", {"step": 4, "rank": 1}))]
SIGINT_BIT = 1 << (signal.SIGINT - 1)
HUNG_GRACE_S = 4  # the hung job never ends on its own: any grace runs out, a short one keeps the test short


def _submit_line(workdir: Path, uri: str, *extra: str, sets: list[str] = SLOW) -> list[str]:
    args = [*TRAINCTL, "submit", JOB, "--set", f"workdir={workdir}", "--set", f"tracking.uri={uri}"]
    for s in sets:
        args += ["--set", s]
    return [*args, *extra]


def _start(how: str, workdir: Path, uri: str) -> tuple[Path, subprocess.Popen]:
    """Start a job the way a user would; returns the file that receives submit's output, and the shell."""
    workdir.mkdir(parents=True)
    out = workdir / "submit.out"
    if how == "nohup":
        line = f"nohup {shlex.join(_submit_line(workdir, uri, '--detach'))} > {out} 2>&1 &"
    elif how == "background":  # a following submit in the background: `trainctl submit … &`
        line = f"{shlex.join(_submit_line(workdir, uri))} > {out} 2>&1 & echo $! > {workdir / 'submit.pid'}"
    else:
        sets = HUNG if how == "hung" else SLOW
        line = f"{shlex.join(_submit_line(workdir, uri, '--detach', sets=sets))} > {out} 2>&1"
    return out, subprocess.Popen(["bash", "-c", line], cwd=ROOT)


def _run_id(out: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines() if out.exists() else []:
            if line.startswith("run id:"):
                return line.split()[-1]
        time.sleep(0.5)
    raise AssertionError(f"no run id from submit in {timeout} s: {out.read_text() if out.exists() else ''}")



def _stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, …] of a live process; None when gone or a zombie (it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields


def _group(pgid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (st := _stat(int(p.name))) and int(st[2]) == pgid]


def _job_pids(rdir: Path) -> tuple[int, list[int]]:
    """(controller pid, rank pids from the attempts' start markers)."""
    controller = json.loads((rdir / "scheduler.json").read_text())["pid"]
    ranks = [json.loads(p.read_text())["pid"] for p in (rdir / "attempts").glob("*/rank-*.start.json")]
    return controller, ranks


def test_cancel_reaches_jobs_from_nohup_background_and_detached(mlflow_server: str, tmp_path: Path) -> None:
    hows = ("nohup", "background", "detached", "hung")
    try:
        _cancel_four(mlflow_server, tmp_path, hows)
    finally:  # a failed check must not leave a job training (the hung one for an hour)
        for sched in tmp_path.glob("*/*/scheduler.json"):
            if _group(leader := json.loads(sched.read_text())["pid"]):
                os.killpg(leader, signal.SIGKILL)


def _cancel_four(mlflow_server: str, tmp_path: Path, hows: tuple[str, ...]) -> None:
    started = {how: _start(how, tmp_path / how, mlflow_server) for how in hows}  # side by side
    assert all(shell.wait(300) == 0 for _, shell in started.values())
    outs = {how: out for how, (out, _) in started.items()}
    runs = {how: _run_id(outs[how]) for how in hows}
    for how in hows:
        wait_steps(mlflow_server, runs[how], 3)
    rdirs = {how: Path(run_info(mlflow_server, runs[how]).data.tags["trainctl.run_dir"]) for how in hows}
    for how in hows:  # (a) the controller leads a process group of its own and hears SIGINT, whatever shell
        controller, ranks = _job_pids(rdirs[how])
        assert len(ranks) == 2 and _stat(controller) is not None, (how, controller, ranks)
        assert int(_stat(controller)[2]) == controller, f"{how}: the controller leads its own process group"
        ignored = int(next(line.split()[1] for line in Path(f"/proc/{controller}/status").read_text().splitlines()
                           if line.startswith("SigIgn:")), 16)
        assert not ignored & SIGINT_BIT, f"{how}: the controller inherited SIGINT ignored"
        assert set(ranks) <= set(_group(controller)), f"{how}: the ranks are in the job's group"
    t0 = time.monotonic()
    cancels = {how: subprocess.Popen([*TRAINCTL, "cancel", runs[how], "--tracking-uri", mlflow_server, "--grace",
                                      str(HUNG_GRACE_S) if how == "hung" else "60"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for how in hows}
    said = {how: proc.communicate(timeout=240)[0] for how, proc in cancels.items()}
    took = time.monotonic() - t0
    client = MlflowClient(tracking_uri=mlflow_server)
    for how in hows:
        run_id, rdir, text = runs[how], rdirs[how], said[how]
        assert cancels[how].returncode == 0, f"{how}: {text}"
        assert "SIGTERM to the controller" in text and "no process of the job is left" in text, text
        controller, ranks = _job_pids(rdir)
        alive = [p for p in [controller, *ranks, *_group(controller)] if _stat(p) is not None]
        assert not alive, f"{how}: processes of the job still run after cancel returned: {alive}"
        run = run_info(mlflow_server, run_id)
        assert run.info.status == "KILLED" and run.data.tags["trainctl.state"] == "KILLED", how
        (attempt,) = [json.loads(p.read_text()) for p in sorted((rdir / "attempts").glob("*.json"))]
        assert attempt["outcome"] == "killed" and attempt["ended"] is not None, (how, attempt)
        if how == "hung":  # the stop path cannot finish: the grace runs out, the group is killed, cancel closes
            assert f"after {HUNG_GRACE_S} s" in text and "SIGKILL to" in text, text
            assert attempt["step"] is None and "ended before a verdict" in attempt["reason"], attempt
            continue
        assert attempt["step"] is not None and attempt["step"] >= 3, (how, attempt)  # the ranks' stop path ran
        assert f"closed killed (checkpoint of step {attempt['step']})" in text, text
        # the verdict's facts reach the run although its state is the cancel's (only the state is guarded)
        assert run.data.tags.get("trainctl.speedups"), (how, run.data.tags)
        assert run.data.tags["trainctl.reason"] == "cancelled by the user", (how, run.data.tags)
        logs = [a.path for a in client.list_artifacts(run_id, "logs")]
        assert any("_0_log" in p for p in logs) and any("_1_log" in p for p in logs), (how, logs)
        last = [a.path for a in client.list_artifacts(run_id, "checkpoints/last")]
        assert "checkpoints/last/last.ckpt" in last, (how, last)
        (tmp_path / how).mkdir(exist_ok=True)
        manifest = client.download_artifacts(run_id, "checkpoints/last/last.ckpt.manifest.json", str(tmp_path / how))
        assert json.loads(Path(manifest).read_text())["global_step"] == attempt["step"], (how, attempt)
    follower = int((tmp_path / "background" / "submit.pid").read_text())
    deadline = time.monotonic() + 60
    while _stat(follower) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _stat(follower) is None, "the following submit ends with its job"
    assert "ended KILLED" in outs["background"].read_text()
    again = run_cli("cancel", runs["detached"], "--tracking-uri", mlflow_server)
    assert again.returncode == 2 and "already ended KILLED" in again.stderr, again.stderr
    bad = run_cli("cancel", runs["detached"], "--tracking-uri", mlflow_server, "--grace", "0")
    assert bad.returncode == 2 and "--grace" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    print(f"\n{len(hows)} cancels side by side: {took:.1f} s\n" + "\n".join(said.values()))

