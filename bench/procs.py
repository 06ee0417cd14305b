"""Benchmark children and their environment: the repository importable, one JSON line back, the machine named."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_json(out: dict[str, Any], path: Path | None) -> None:
    """A benchmark module's result: printed, and written to --out when given."""
    text = json.dumps(out, indent=2)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(text)


def python_env(threads: int = 1) -> dict[str, str]:
    """The environment of every benchmark child: the repository importable; `threads` intra-op threads, or
    (threads=0, for `trainctl submit`) whatever trainctl itself sets from resources.cpus_per_task."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads:
            env[var] = str(threads)
        else:
            env.pop(var, None)
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_json(args: list[str], timeout: float = 600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child Python module; its last stdout line starting with `{` is the result.

    The child runs in a session of its own. Once it has printed its result it gets 30 s to exit; then its whole
    process group is killed: a rank can deadlock in its own teardown (ProcessGroupGloo's destructor joins a gloo
    thread that waits for the GIL the destructor holds, seen with torch 2.13), and the figure is already out.
    """
    import signal
    import threading

    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or python_env(), cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, lambda: _killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("{"):
                break
        try:
            proc.wait(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        timer.cancel()
    reader.join(timeout=5)
    result = [ln for ln in lines if ln.startswith("{")]
    if not result:
        raise RuntimeError(f"{' '.join(args)} failed (rc {proc.returncode}):\n{''.join(lines)[-3000:]}\n"
                           f"{''.join(err)[-3000:]}")
    return json.loads(result[-1])


def _killpg(pid: int, sig: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def load_now() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> dict[str, Any]:
    import contextlib

    import lightning_utilities
    import mlflow
    import pytorch_lightning as pl
    import submitit
    import torch

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    mem_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {
        "host": platform.node(), "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
        "mem_gb": round(mem_gb, 1), "python": platform.python_version(), "torch": torch.__version__,
        "pytorch_lightning": pl.__version__, "lightning_utilities": lightning_utilities.__version__,
        "mlflow": mlflow.__version__, "submitit": submitit.__version__, "load_avg_1m_at_start": load_now(),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
    }


def _git(*args: str) -> str:
    try:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return res.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


