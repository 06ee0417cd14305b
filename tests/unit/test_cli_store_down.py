"""A tracking server that does not answer, through the real CLI: every run command says so, names the store and
how to bring it back, and exits 2 without a traceback, whether the store was named or found in the index."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from .test_cli_errors import assert_clean_usage_error, trainctl

RUN = "abcdef123456"


def dead_uri() -> str:
    """A local port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_every_run_command_says_a_named_server_is_down(tmp_path: Path) -> None:
    uri = dead_uri()
    commands = [["ls"], ["status", RUN], ["logs", RUN], ["cancel", RUN], ["resume", RUN], ["sync", RUN],
                ["register", RUN, "model"], ["reproduce", RUN]]
    with_uri = [[*cmd, "--tracking-uri", uri] for cmd in commands]
    env_uri = [["status", RUN]]  # the same store named by MLFLOW_TRACKING_URI
    procs = [_start(args, tmp_path) for args in with_uri] + [_start(args, tmp_path, uri) for args in env_uri]
    for args, proc in zip(with_uri + env_uri, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        res = subprocess.CompletedProcess(args, proc.returncode, out, err)
        assert_clean_usage_error(res, uri, "does not answer", "make mlflow", "--tracking-uri")
        assert "no run" not in err, err  # the server is down: that says nothing about the run


def test_a_store_of_the_index_that_does_not_answer_is_named(tmp_path: Path) -> None:
    uri = dead_uri()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "stores").write_text(f"{uri}\n")
    for args in (["status", RUN], ["ls"]):
        res = trainctl(*args, cwd=tmp_path)
        assert_clean_usage_error(res, uri, "does not answer", "make mlflow", str(tmp_path / "state" / "stores"))


def _start(args: list[str], cwd: Path, env_uri: str | None = None) -> subprocess.Popen[str]:
    """trainctl as test_cli_errors.trainctl runs it, started (the commands run side by side)."""
    import os

    from .test_cli_errors import ROOT

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["TRAINCTL_STATE_DIR"] = str(cwd / "state")
    if env_uri:
        env["MLFLOW_TRACKING_URI"] = env_uri
    return subprocess.Popen([sys.executable, "-m", "trainctl.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
