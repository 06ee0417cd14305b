"""One trial, as every one of its ranks starts it (submitit's callable; local executor or a SLURM array task).

The first rank to take the trial's lock, on its first start, asks the study for the parameters and fixes the
trial: params.json, its child run, its job.json (the run directory a single job has). Any later start (another
rank, a requeue, a resume) finds job.json and goes straight to the worker: the trial never asks twice.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
from pathlib import Path

from trainctl.rundir import JobFile, atomic_write_text, use_import_dirs
from trainctl.spec import apply_override, parse_spec
from trainctl.sweep import engine, reporter, runs
from trainctl.sweep.layout import SweepFile, locked, read_json, trial_dir, write_json
from trainctl.sweep.space import assignments, parse_sweep


def run_trial(sweep_dir: str, index: int) -> str:
    sd = Path(sweep_dir)
    td = trial_dir(sd, index)
    sf = SweepFile.read(sd)
    use_import_dirs(sf.import_dirs)
    with locked(td / "prepare.lock"):
        if not JobFile.path(td).is_file():
            why = runs.why_not_start(sf)
            if why:
                print(f"trainctl: trial {index} not started: {why}", flush=True)
                return why
            prepare(sd, sf, index, td)
    done = runs.ended(sd, index)
    if done is not None and done.outcome == "finished":  # a requeue that came as the trial finished
        print(f"trainctl: trial {index} has finished already", flush=True)
        return "finished"
    if sf.backend == "slurm":
        _slurm_task(sd, td)
    injob = importlib.import_module(f"trainctl.launchers.{sf.backend}.injob")
    reason = injob.run_rank(str(td))
    if os.environ.get("RANK", "0") == "0":
        runs.settle(sd)
    return reason


def prepare(sd: Path, sf: SweepFile, index: int, td: Path) -> None:
    cfg = parse_sweep(sf.sweep)
    fixed = read_json(td / "params.json")
    if fixed is None:  # the first start: ask once, and keep the answer before anything else can fail
        number, trial_id, params = engine.ask(sd, cfg, index)
        fixed = {"index": index, "number": number, "trial_id": trial_id, "params": params}
        write_json(td / "params.json", fixed)
    raw = copy.deepcopy(sf.spec)
    for assignment in assignments(fixed["params"]):
        apply_override(raw, assignment)
    report = reporter.class_path(raw["model"]["class_path"])
    raw["callbacks"] = [*raw.get("callbacks", []),
                        {"class_path": report, "init_args": {"sweep_dir": str(sd), "trial_dir": str(td)}}]
    spec = parse_spec(raw, f"trial {index}", check_classes=False)
    run_id = runs.create_child(sf, spec, index, fixed["params"], td)
    port = 0
    if sf.backend == "local":
        from trainctl.launchers.local.submit import free_port

        port = free_port()
        pid = os.getppid()  # the trial's submitit controller: the process group a cancel signals
        atomic_write_text(td / "scheduler.json", json.dumps({"job_id": str(pid), "pid": pid, "pgid": pid}))
        scheduler_id = str(pid)
    else:
        scheduler_id = os.environ.get("SLURM_JOB_ID", "")
        atomic_write_text(td / "scheduler.json", json.dumps({"job_id": scheduler_id,
                                                             "job_name": os.environ.get("SLURM_JOB_NAME", "")}))
    from trainctl import tracking

    tracking.client(sf.tracking_uri).set_tag(run_id, "trainctl.scheduler_job_id", scheduler_id)
    JobFile(run_id=run_id, tracking_uri=sf.tracking_uri, backend=sf.backend, spec=spec.to_dict(), master_port=port,
            import_dirs=sf.import_dirs).write(td)


def _slurm_task(sd: Path, td: Path) -> None:
    """A SLURM array task writes to the sweep's logs (<array>_<task>_<rank>_log.*): this rank's files appear in the
    trial's logs/ under a single job's names, and SUBMITIT_FOLDER names the trial (the launcher finds the run by it)."""
    job, array, task = (os.environ.get(k, "") for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    rank = os.environ.get("SLURM_PROCID", "0")
    logs = td / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for stream in ("out", "err"):
        link = logs / f"{job}_{rank}_log.{stream}"
        if not link.exists():
            with contextlib.suppress(FileExistsError):
                link.symlink_to(sd / "logs" / f"{array}_{task}_{rank}_log.{stream}")
    os.environ["SUBMITIT_FOLDER"] = str(logs)
