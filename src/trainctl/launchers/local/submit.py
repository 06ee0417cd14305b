"""Local backend, submit side: submitit's LocalExecutor runs `devices_per_node` ranks on this machine.

submitit's local controller is a detached process that starts one task per rank, sends USR2
`signal_lead_s` before `resources.time_min`, forwards a SIGTERM it gets to every task, and restarts the tasks
when one exits with its requeue code (144): that is the local requeue (injob.py). Several jobs can run at once:
each gets its own rendezvous port.

The controller starts in a session (and process group) of its own, with SIGINT, SIGTERM and SIGUSR2 at their
defaults and none blocked: a shell that starts `trainctl submit` under nohup or in the background (`&`) hands its
children SIGINT ignored, and the job must not inherit that. The group is the job: a cancel signals and counts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainctl.launchers.base import CancelReport, Say, Submission, poll_until, read_rank_logs
from trainctl.launchers.procs import describe, job_processes, own_group, pid_alive, send
from trainctl.rundir import JobFile
from trainctl.runstate import State
from trainctl.spec import Spec

MAX_ATTEMPTS = 6  # submitit's local controller restarts at most this many times
TERM_GRACE_S = 5.0  # after the stop grace: SIGTERM to every process of the job, then SIGKILL this much later
KILL_WAIT_S = 10.0  # after SIGKILL: how long the kernel may take to end them before cancel names what is left
# Run by the controller's interpreter before submitit's controller: default dispositions, nothing blocked, then exec.
CONTROLLER_STUB = ("import os,signal,sys\n"
                   "for s in (signal.SIGINT,signal.SIGTERM,signal.SIGUSR2): signal.signal(s,signal.SIG_DFL)\n"
                   "signal.pthread_sigmask(signal.SIG_SETMASK,())\n"
                   "os.execv(sys.executable,[sys.executable,*sys.argv[1:]])")


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

    def rendezvous_port(self) -> int:
        """Several local jobs may run at once: each gets a free port of its own."""
        return free_port()

    def dry_run(self, spec: Spec, run_dir: Path) -> str:
        params = executor_parameters(spec)
        return (f"submitit.LocalExecutor(folder={run_dir / 'logs'})\n"
                f"  parameters: {json.dumps(params)}\n"
                f"  command (per rank): {sys.executable} -m submitit.core._submit {run_dir / 'logs'}\n"
                f"  callable: trainctl.launchers.local.injob.run_rank({str(run_dir)!r})")

    def submit(self, spec: Spec, run_dir: Path, job: JobFile) -> Submission:
        import submitit

        from trainctl.launchers.local.injob import run_rank

        executor = executor_class(submitit)(folder=run_dir / "logs")
        executor.update_parameters(**executor_parameters(spec))
        with _stdio_to(run_dir / "logs" / "controller.log"):  # the job must not hold our stdout open
            sub = executor.submit(run_rank, str(run_dir))
        (run_dir / "scheduler.json").write_text(json.dumps({"job_id": sub.job_id, "pid": int(sub.job_id),
                                                            "pgid": int(sub.job_id)}))
        return Submission(str(sub.job_id), f"controller pid {sub.job_id}")

    def status(self, run_dir: Path, scheduler_job_id: str) -> State | None:
        return State.RUNNING if pid_alive(int(scheduler_job_id)) else None

    def logs(self, run_dir: Path, scheduler_job_id: str) -> dict[str, str]:
        return read_rank_logs(run_dir / "logs")

    def cancel(self, run_dir: Path, scheduler_job_id: str, grace_s: float, say: Say) -> CancelReport:
        """SIGTERM to the controller, which forwards it to every rank: trainctl's stop path (the ranks agree on a
        step, save it, read that the run is KILLED and end). After `grace_s`, SIGTERM to every process of the job,
        then SIGKILL; return when none is left, or name those that are."""
        leader, marker = int(scheduler_job_id), str(run_dir / "logs")
        report = CancelReport(say)
        pids = job_processes(leader, marker)
        if not pids:
            report.step("no process of the job was running")
            return report
        if leader in pids:
            report.step(f"stopping: SIGTERM to the controller (pid {leader}), which passes it to every rank; each "
                        f"saves its current step and ends (grace {grace_s:.0f} s, then SIGTERM and SIGKILL to all "
                        f"{len(pids)} processes of the job)")
            send([leader], signal.SIGTERM)
        else:  # the controller is gone: its ranks get the stop signal themselves
            report.step(f"stopping: SIGTERM to the job's {len(pids)} processes (its controller is gone; grace "
                        f"{grace_s:.0f} s, then SIGKILL)")
            send(pids, signal.SIGTERM)
        t0 = time.monotonic()
        left = _wait_gone(leader, marker, grace_s)
        if not left:
            report.step(f"all {len(pids)} processes of the job ended in {time.monotonic() - t0:.1f} s")
            return report
        report.step(f"after {grace_s:.0f} s {len(left)} processes still run: SIGTERM to each "
                    f"({', '.join(map(str, left))}), SIGKILL in {TERM_GRACE_S:.0f} s")
        send(left, signal.SIGTERM, own_group(leader, left))
        left = _wait_gone(leader, marker, TERM_GRACE_S)
        if left:
            report.step(f"SIGKILL to {len(left)} processes ({', '.join(map(str, left))})")
            send(left, signal.SIGKILL, own_group(leader, left))
            left = _wait_gone(leader, marker, KILL_WAIT_S)
        report.left = [describe(p) for p in left]
        if not left:
            report.step(f"all processes of the job ended ({time.monotonic() - t0:.1f} s)")
        return report


def _wait_gone(leader: int, marker: str, timeout_s: float) -> list[int]:
    """Wait until no process of the job is left (up to timeout_s); return those that still are."""
    return poll_until(lambda: job_processes(leader, marker), lambda left: not left, timeout_s, 0.2)


def executor_class(submitit: Any) -> Any:
    """submitit's LocalExecutor, with its controller started through CONTROLLER_STUB in a session of its own."""
    from submitit.local.local import LocalJob

    class Executor(submitit.LocalExecutor):
        def _submit_command(self, command: str) -> Any:
            # The environment submitit.local.local.start_controller gives its controller (submitit 1.5), except
            # CUDA_VISIBLE_DEVICES: the spec's GPUs (submitit's rule shows none unless gpus_per_node is set).
            ntasks = self.parameters.get("tasks_per_node", 1)
            env = dict(os.environ)
            env.update(
                SUBMITIT_LOCAL_NTASKS=str(ntasks), SUBMITIT_LOCAL_COMMAND=command,
                SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
                SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_STDERR_TO_STDOUT="",
                SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_WITH_SHELL="",
                CUDA_VISIBLE_DEVICES=",".join(str(g) for g in self.parameters.get("visible_gpus", ())),
            )
            process = subprocess.Popen([sys.executable, "-S", "-c", CONTROLLER_STUB, "-m", "submitit.local._local",
                                        str(self.folder)], env=env, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))

    return Executor


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


LAUNCHER = LocalLauncher()
