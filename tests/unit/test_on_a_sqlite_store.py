"""`ls`, `resume` and the state writer on a real sqlite store (made by MlflowClient, as a submit makes it): sweep
trials do not eat --limit, a reader that leaves the pipe ends the command quietly, a bad --state lists the states,
a run with nothing to resume from points to a fresh submit, and a cancelled run still gets its verdict's tags."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainctl import cli, store_read, tracking
from trainctl.rundir import JobFile
from trainctl.runstate import State

from .spec_helpers import digits_raw
from .test_cli_errors import ROOT, assert_clean_usage_error, trainctl


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs, then a sweep of five trials (newer); the oldest run FAILED before any checkpoint."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cl = MlflowClient(tracking_uri=uri)
    exp = cl.create_experiment("ls")

    def run(name: str, start: int, state: str, **tags: str) -> str:
        rid = cl.create_run(exp, start_time=start, tags={"trainctl.backend": "local", "mlflow.runName": name,
                                                         "trainctl.state": state, **tags}).info.run_id
        cl.set_terminated(rid, state)
        return rid

    broken = run("broken", 1000, "FAILED")
    rdir = root / "broken"
    JobFile(run_id=broken, tracking_uri=uri, backend="local", spec=digits_raw()).write(rdir)
    (rdir / "spec.yaml").write_text("name: broken\n")
    cl.set_tag(broken, "trainctl.run_dir", str(rdir))
    plain = [run(f"plain-{i}", 2000 + i, "FINISHED") for i in range(2)]
    trials = [run(f"trial-{i}", 3000 + i, "FINISHED", **{"trainctl.sweep_id": "s"}) for i in range(5)]
    return {"uri": uri, "root": root, "broken": broken, "plain": plain, "trials": trials, "rdir": rdir}


def test_ls_limit_counts_only_the_runs_shown(store: dict[str, Any], tmp_path: Path) -> None:
    res = trainctl("ls", "--limit", "2", "--tracking-uri", store["uri"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "plain-1" in res.stdout and "plain-0" in res.stdout, res.stdout
    assert "trial-" not in res.stdout and "broken" not in res.stdout, res.stdout
    every = trainctl("ls", "--tracking-uri", store["uri"], cwd=tmp_path).stdout
    assert all(name in every for name in ("plain-0", "plain-1", "broken")) and "trial-" not in every, every


def test_a_dead_server_of_the_index_does_not_hide_the_others(store: dict[str, Any], tmp_path: Path) -> None:
    from .test_cli_store_down import dead_uri

    dead = dead_uri()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "stores").write_text(f"{store['uri']}\n{dead}\n")
    found = trainctl("status", store["broken"][:10], cwd=tmp_path)
    assert found.returncode == 0 and "FAILED" in found.stdout, found.stderr
    listed = trainctl("ls", cwd=tmp_path)
    assert f"store {store['uri']}" in listed.stdout and "plain-1" in listed.stdout, listed.stdout
    assert_clean_usage_error(listed, dead, "does not answer")


def test_ls_into_a_closed_pipe_ends_quietly(store: dict[str, Any], tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "trainctl.cli", "ls", "--tracking-uri", store["uri"]],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # as `| head -0` does: the reader is gone before the first line
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141, err  # 128 + SIGPIPE, as a shell reports a writer the reader left
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize(("value", "words"), [("BOGUS", ["RUNNING, ", "e.g. --state RUNNING"]),
                                              ("runing", ["did you mean 'RUNNING'?"])])
def test_ls_state_lists_the_states(tmp_path: Path, value: str, words: list[str]) -> None:
    res = trainctl("ls", "--state", value, cwd=tmp_path)
    assert_clean_usage_error(res, "--state", "is not a run state", "FINISHED", "KILLED", *words)


def test_resume_with_no_checkpoint_points_to_submit(store: dict[str, Any], tmp_path: Path) -> None:
    spec = str(store["rdir"] / "spec.yaml")
    for source in ("last", "best"):
        res = trainctl("resume", store["broken"], "--from", source, "--tracking-uri", store["uri"], cwd=tmp_path)
        assert_clean_usage_error(res, "no verified checkpoint", "nothing to resume", f"trainctl submit {spec}")
        assert "--from" not in res.stderr.split("HINT:")[1], res.stderr


@pytest.mark.parametrize(("flags", "backend", "follows"), [
    ([], "slurm", False), (["--wait"], "slurm", True), (["--wait"], "ray", True), ([], "local", True),
    (["--wait", "--detach"], "slurm", False), (["--detach"], "local", False)])
def test_resume_wait_follows_like_submit(flags: list[str], backend: str, follows: bool) -> None:
    for command in (["resume", "abcdef12"], ["submit", "job.yaml"]):
        args: argparse.Namespace = cli.parser().parse_args([*command, *flags])
        assert cli._follows(args, backend) is follows, (command, flags, backend)


def test_a_guarded_state_still_writes_the_tags(store: dict[str, Any]) -> None:
    """A rank's verdict after a cancel: the KILLED state and its reason stay, the verdict's facts are recorded."""
    uri, run_id = store["uri"], store["plain"][0]
    tracking.set_state(uri, run_id, State.KILLED, reason="cancelled by the user")
    wrote = tracking.set_state(uri, run_id, State.FINISHED, reason="done", unless=tracking.cancelled,
                               **{"trainctl.speedups": "on", "trainctl.attempt": "1"})
    rec = store_read.get_run(uri, run_id)
    assert rec is not None and wrote is False
    assert (rec.status, rec.tags["trainctl.state"], rec.tags["trainctl.reason"]) == \
        ("KILLED", "KILLED", "cancelled by the user")
    assert rec.tags["trainctl.speedups"] == "on" and rec.tags["trainctl.attempt"] == "1", rec.tags
