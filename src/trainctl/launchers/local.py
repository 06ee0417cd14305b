"""Local backend: submitit's LocalExecutor runs `devices_per_node` ranks on this machine.

submitit's local controller is a detached process that starts one task per rank, sends USR2
`signal_lead_s` before `resources.time_min`, and restarts the tasks when one exits with its requeue code
(144): that is the local requeue. Several jobs can run at once: each gets its own rendezvous port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from trainctl.launchers.base import Submission, read_rank_logs
from trainctl.rundir import JobFile
from trainctl.spec import Spec
from trainctl.tracking import State
from trainctl.worker.env import RankInfo

REQUEUE_EXIT_CODE = 144  # submitit.local.local.LOCAL_REQUEUE_RETURN_CODE
MAX_ATTEMPTS = 6  # submitit's local controller restarts at most this many times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executor_parameters(spec: Spec) -> dict[str, object]:
    return {
        "timeout_min": spec.resources.time_min,
        "tasks_per_node": spec.resources.devices_per_node,
        "signal_delay_s": spec.fault_tolerance.signal_lead_s,
        "visible_gpus": tuple(range(spec.resources.devices_per_node)) if spec.resources.accelerator.value == "gpu"
        else (),
    }


class LocalLauncher:
    kind = "local"
    poll_s = 0.2  # a pid check

    def dry_run(self, spec: Spec, run_dir: Path) -> str:
        params = executor_parameters(spec)
        return (f"submitit.LocalExecutor(folder={run_dir / 'logs'})\n"
                f"  parameters: {json.dumps(params)}\n"
                f"  command (per rank): {sys.executable} -m submitit.core._submit {run_dir / 'logs'}\n"
                f"  callable: trainctl.worker.entrypoint.run_rank({str(run_dir)!r})")

    def submit(self, spec: Spec, run_dir: Path, job: JobFile) -> Submission:
        import submitit

        from trainctl.worker.entrypoint import run_rank

        executor = submitit.LocalExecutor(folder=run_dir / "logs")
        executor.update_parameters(**executor_parameters(spec))
        with _stdio_to(run_dir / "logs" / "controller.log"):  # the job must not hold our stdout open
            sub = executor.submit(run_rank, str(run_dir))
        (run_dir / "scheduler.json").write_text(json.dumps({"job_id": sub.job_id, "pid": int(sub.job_id)}))
        return Submission(str(sub.job_id), f"controller pid {sub.job_id}")

    def status(self, run_dir: Path, scheduler_job_id: str) -> State | None:
        return State.RUNNING if pid_alive(int(scheduler_job_id)) else None

    def logs(self, run_dir: Path, scheduler_job_id: str) -> dict[str, str]:
        return read_rank_logs(run_dir / "logs")

    def cancel(self, run_dir: Path, scheduler_job_id: str) -> None:
        pid = int(scheduler_job_id)
        if pid_alive(pid):
            os.kill(pid, signal.SIGINT)  # the controller stops its tasks (SIGINT, then SIGKILL after 1 s)


@contextlib.contextmanager
def _stdio_to(path: Path) -> Iterator[None]:
    """Point fds 1 and 2 at `path` while the controller is spawned, so it inherits the file, not our pipes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def requeue_self(rank: RankInfo) -> NoReturn:
    """Every rank exits with submitit's requeue code; the local controller starts the ranks again."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(REQUEUE_EXIT_CODE)


LAUNCHER = LocalLauncher()
