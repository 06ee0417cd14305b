"""The SLURM launcher without a cluster: the exact sbatch script (golden file), quoting, state mapping, status.

Regenerate the golden file after an intended change: UPDATE_GOLDEN=1 pytest tests/unit/test_slurm_render.py
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from trainctl.errors import UserError
from trainctl.launchers.base import CancelReport
from trainctl.launchers.slurm import submit as slurm
from trainctl.runstate import State
from trainctl.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "digits-slurm.sbatch"
RUN_DIR = Path("/shared/runs/digits-slurm-0123abcd")
PYTHON = "/opt/venv/bin/python"


def _spec(*sets: str) -> Spec:
    return load_spec(ROOT / "jobs" / "digits-slurm.yaml", list(sets), check_classes=False)


def test_golden_sbatch_script() -> None:
    text = slurm.render(_spec(), RUN_DIR, python=PYTHON)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "sbatch script changed; UPDATE_GOLDEN=1 to accept"
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_render_is_what_submitit_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dry run and the submitted script are the same text: both come from submitit's rendering."""
    import submitit.slurm.slurm as sl

    monkeypatch.setattr(sl.shutil, "which", lambda name: f"/usr/bin/{name}")
    spec = _spec("backend.slurm.setup=[\"module load x\"]", "backend.slurm.qos=high")
    executor = slurm.make_executor(spec, RUN_DIR, python=PYTHON)
    written = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    assert written == slurm.render(spec, RUN_DIR, python=PYTHON)


def test_options_reach_sbatch() -> None:
    text = slurm.render(_spec(
        "resources.nodes=3", "resources.devices_per_node=2", "resources.cpus_per_task=4", "resources.mem_gb=1.5",
        "resources.time_min=90", "resources.accelerator=gpu", "fault_tolerance.signal_lead_s=120",
        "backend.slurm.account=proj_1", "backend.slurm.qos=high", "backend.slurm.constraint=a100&ib",
        "backend.slurm.sbatch={exclusive: true, reservation: maint}", "backend.slurm.partition=gpu",
    ), RUN_DIR, python=PYTHON)
    flags = {line.split()[1] for line in text.splitlines() if line.startswith("#SBATCH")}
    for want in ["--nodes=3", "--ntasks-per-node=2", "--cpus-per-task=4", "--mem=1536MB", "--time=90",
                 "--gpus-per-node=2", "--signal=USR2@120", "--requeue", "--open-mode=append", "--account=proj_1",
                 "--qos=high", "--constraint='a100&ib'", "--exclusive", "--reservation=maint", "--partition=gpu",
                 "--job-name=digits-slurm-0123abcd"]:
        assert want in flags, (want, sorted(flags))
    assert not any(f.startswith("--signal=B:") for f in flags), "the ranks (job steps) get the signal, not bash"
    explicit_gpus = slurm.render(_spec("resources.accelerator=gpu", "backend.slurm.gpus_per_node=4"), RUN_DIR)
    assert "#SBATCH --gpus-per-node=4" in explicit_gpus
    assert "gpus-per-node" not in slurm.render(_spec(), RUN_DIR), "CPU jobs ask for no GPU"


def test_no_restarts_means_no_requeue() -> None:
    text = slurm.render(_spec("fault_tolerance.max_restarts=0"), RUN_DIR)
    assert "#SBATCH --no-requeue" in text and "#SBATCH --requeue" not in text


def test_paths_are_quoted(tmp_path: Path) -> None:
    """A run directory with shell characters reaches the shell as one word, never as code."""
    odd = tmp_path / "a b" / "$(touch pwned);`id`'q\"" / "digits-slurm-0123abcd"
    text = slurm.render(_spec("backend.slurm.setup=[\"echo setup-line\"]"), odd, python=PYTHON)
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    words = shlex.split(srun)
    assert words[words.index("--output") + 1] == f"{odd}/logs/%j_%t_log.out"
    assert words[-1] == f"{odd}/logs"
    for line in text.splitlines():
        if line.startswith("#SBATCH --output="):
            assert shlex.split(line.split("=", 1)[1]) == [f"{odd}/logs/%j_0_log.out"]
    assert "\necho setup-line\n" in text, "setup lines are the user's own shell lines, verbatim"
    # Run the script's shell with srun replaced by a stub that prints its arguments: nothing is executed.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (stub / "srun").chmod(0o755)
    out = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": f"{stub}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f"{odd}/logs" in out.stdout.splitlines()
    assert not (tmp_path / "pwned").exists()


def test_percent_in_run_dir_is_refused() -> None:
    with pytest.raises(UserError, match="%"):
        slurm.render(_spec(), Path("/x/50%/digits-slurm-0123abcd"))


def test_signals_blocked_until_handlers() -> None:
    """Each rank's interpreter starts with USR2/TERM blocked (pending, not lost) until trainctl's handlers."""
    script = "import signal; print(sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"
    out = subprocess.run(f"{slurm.python_command(sys.executable)} -c {shlex.quote(script)}", shell=True,
                         capture_output=True, text=True, check=True)
    assert "SIGUSR2" in out.stdout and "SIGTERM" in out.stdout


# ---------------------------------------------------------------- job states

ALL_STATES = {
    "BOOT_FAIL": State.FAILED, "CANCELLED": State.KILLED, "COMPLETED": State.FINISHED,
    "COMPLETING": State.RUNNING, "CONFIGURING": State.PENDING, "DEADLINE": State.FAILED, "FAILED": State.FAILED,
    "NODE_FAIL": State.FAILED, "OUT_OF_MEMORY": State.FAILED, "PENDING": State.PENDING,
    "PREEMPTED": State.FAILED, "REQUEUED": State.REQUEUED, "REQUEUE_FED": State.REQUEUED,
    "REQUEUE_HOLD": State.REQUEUED, "RESIZING": State.RUNNING, "RESV_DEL_HOLD": State.PENDING,
    "REVOKED": State.RUNNING, "RUNNING": State.RUNNING, "SIGNALING": State.RUNNING,
    "SPECIAL_EXIT": State.REQUEUED, "STAGE_OUT": State.RUNNING, "STOPPED": State.RUNNING,
    "SUSPENDED": State.PENDING, "TIMEOUT": State.FAILED, "POWER_UP_NODE": State.PENDING,
    "UPDATE_DB": State.RUNNING, "LAUNCH_FAILED": State.FAILED, "RECONFIG_FAIL": State.FAILED,
    "EXPEDITING": State.REQUEUED,
}


def test_every_slurm_state_is_mapped() -> None:
    assert set(slurm.SLURM_STATES) == set(ALL_STATES)
    for raw, want in ALL_STATES.items():
        assert slurm.map_state(raw) is want, raw
    assert slurm.map_state("CANCELLED by 1000") is State.KILLED
    assert slurm.map_state("CANCELLED+") is State.KILLED
    assert slurm.map_state("NEW_STATE_2030") is State.RUNNING, "unknown: never end a run on a guess"


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """squeue/sacct/scancel stubs answering from a JSON file: {cmd: [rc, stdout, stderr]}."""
    answers = tmp_path / "answers.json"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for cmd in ("squeue", "sacct", "scancel"):
        (bindir / cmd).write_text(
            "#!/usr/bin/env python3\nimport json, sys\n"
            f"a = json.load(open({str(answers)!r})).get({cmd!r}, [0, '', ''])\n"
            f"open({str(tmp_path / 'calls')!r}, 'a').write({cmd!r} + ' ' + ' '.join(sys.argv[1:]) + '\\n')\n"
            "sys.stdout.write(a[1]); sys.stderr.write(a[2]); sys.exit(a[0])\n")
        (bindir / cmd).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    run_dir = tmp_path / "digits-slurm-0123abcd"
    run_dir.mkdir()
    (run_dir / "scheduler.json").write_text(json.dumps({"job_id": "7", "job_name": run_dir.name}))

    def answer(**kw: list[object]) -> Path:
        answers.write_text(json.dumps(kw))
        return run_dir

    return answer


def test_status_live_ended_gone(fake_slurm: Callable[..., Path], tmp_path: Path) -> None:
    launcher = slurm.LAUNCHER
    name = "digits-slurm-0123abcd"
    for raw in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING"):
        run_dir = fake_slurm(squeue=[0, f"{raw}|{name}\n", ""])
        assert launcher.status(run_dir, "7") is ALL_STATES[raw], raw
    # ended, still known to the controller / only to accounting
    assert launcher.status(fake_slurm(squeue=[0, f"COMPLETED|{name}\n", ""]), "7") is None
    assert launcher.status(fake_slurm(squeue=[0, f"CANCELLED|{name}\n", ""]), "7") is State.KILLED
    gone = [1, "", "slurm_load_jobs error: Invalid job id specified\n"]
    assert launcher.status(fake_slurm(squeue=gone, sacct=[0, f"FAILED|{name}\n", ""]), "7") is None
    assert launcher.status(fake_slurm(squeue=gone, sacct=[0, f"CANCELLED by 0|{name}\n", ""]), "7") is State.KILLED
    assert launcher.status(fake_slurm(squeue=gone, sacct=[0, "", ""]), "7") is None
    # the controller forgot a job accounting still calls running (e.g. its state was wiped): it is over
    assert launcher.status(fake_slurm(squeue=gone, sacct=[0, f"RUNNING|{name}\n", ""]), "7") is None
    # a recycled job id (fresh cluster): someone else's job is not this run's
    assert launcher.status(fake_slurm(squeue=[0, "RUNNING|other-job\n", ""]), "7") is None
    # the controller does not answer: do not end the run on it
    down = [1, "", "slurm_load_jobs error: Unable to contact slurm controller\n"]
    assert launcher.status(fake_slurm(squeue=down, sacct=[1, "", "connection refused"]), "7") is State.RUNNING
    assert launcher.status(fake_slurm(squeue=down, sacct=[0, f"PENDING|{name}\n", ""]), "7") is State.PENDING
    assert launcher.status(fake_slurm(squeue=down, sacct=[0, f"COMPLETED|{name}\n", ""]), "7") is None


def test_cancel_only_this_runs_job(fake_slurm: Callable[..., Path], tmp_path: Path) -> None:
    name = "digits-slurm-0123abcd"

    def cancel(run_dir: Path) -> CancelReport:
        return slurm.LAUNCHER.cancel(run_dir, "7", 0.0, lambda line: None)

    assert cancel(fake_slurm(squeue=[0, "RUNNING|other-job\n", ""])).left == []
    assert cancel(fake_slurm(squeue=[0, f"COMPLETED|{name}\n", ""])).left == []
    assert "scancel" not in (tmp_path / "calls").read_text()
    # squeue still shows it running once the grace is over: the cancel says so
    still = cancel(fake_slurm(squeue=[0, f"RUNNING|{name}\n", ""]))
    assert "scancel 7" in (tmp_path / "calls").read_text()
    assert still.left == ["SLURM job 7 (RUNNING): see squeue -j 7"], still
    assert cancel(fake_slurm(squeue=[0, f"CANCELLED|{name}\n", ""])).left == []
    # it ended between the look and the scancel: nothing to report
    cancel(fake_slurm(squeue=[0, f"RUNNING|{name}\n", ""], scancel=[
        1, "", "scancel: error: Kill job error on job id 7: Job/step already completing or completed\n"]))
    with pytest.raises(UserError, match="scancel 7 failed"):
        cancel(fake_slurm(squeue=[0, f"RUNNING|{name}\n", ""], scancel=[
            1, "", "scancel: error: Unable to contact slurm controller\n"]))
