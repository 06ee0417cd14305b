"""`trainctl resume RUN_ID [--from last|best|PATH]`: resubmit a run's stored spec.

From `last` the job continues the same MLflow run (its history goes on). From an older checkpoint the history
would fork, so a new run is created, linked to its parent, and starts from a verified copy of that checkpoint.
Overrides are recorded on the run as tags: params already logged cannot change.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from trainctl import control, tracking
from trainctl.callbacks.checkpoint_io import manifest_path, verify
from trainctl.callbacks.resume_checkpoint import latest_good, resume_dir
from trainctl.errors import UserError
from trainctl.launchers import registry
from trainctl.rundir import JobFile, atomic_write_text, run_dir_for
from trainctl.spec import apply_override, parse_spec
from trainctl.tracking import State
from trainctl.worker.attempt import CAUSE_FILE


def resume(run_id: str, uri: str, source: str, overrides: list[str], backend: str | None
           ) -> tuple[control.RunRef | None, str]:
    ref = control.reconcile(control.find_run(run_id, uri))
    if not ref.state.terminal:
        raise UserError.single("RUN_ID", f"run {run_id} is still {ref.state.value}",
                               f"wait for it, or `trainctl cancel {run_id}` first")
    if not JobFile.path(ref.run_dir).is_file():
        raise UserError.single("RUN_ID", f"the run directory {ref.run_dir} is gone", "resume needs the run's files")
    job = JobFile.read(ref.run_dir)
    raw = json.loads(json.dumps(job.spec))
    for assignment in overrides + ([f"backend.kind={backend}"] if backend else []):
        apply_override(raw, assignment)
    spec = parse_spec(raw, f"run {run_id}")
    checkpoint = _pick(ref, source)
    launcher = registry.load(spec.backend.kind.value).LAUNCHER
    if source == "last":
        target, new_job = ref.run_dir, dataclasses.replace(job, spec=spec.to_dict(), backend=launcher.kind)
        atomic_write_text(target / "attempts" / CAUSE_FILE, "resume")
        run = ref.run_id
        cl = tracking.client(uri)
    else:
        run = tracking.create_run(spec, uri, launcher.kind, source=ref.tags.get("mlflow.source.name"))
        target = run_dir_for(spec.workdir, spec.name, run)
        new_job = JobFile(run_id=run, tracking_uri=job.tracking_uri, backend=launcher.kind, spec=spec.to_dict(),
                          master_port=job.master_port)
        _seed_checkpoint(checkpoint, target)
        cl = tracking.client(uri)
        cl.set_tag(run, "mlflow.parentRunId", ref.run_id)
        cl.set_tag(run, "trainctl.resumed_from", f"{ref.run_id}:{checkpoint.name}")
        cl.set_tag(run, "trainctl.run_dir", str(target))
    new_job.write(target)
    if overrides or backend:
        cl.set_tag(run, "trainctl.resume_overrides", json.dumps(overrides + ([f"backend.kind={backend}"]
                                                                             if backend else [])))
    tracking.set_state(uri, run, State.PENDING, reason=f"resumed from {checkpoint.name}")
    sub = launcher.submit(spec, target, new_job)
    cl.set_tag(run, "trainctl.scheduler_job_id", sub.scheduler_job_id)
    cl.set_tag(run, "trainctl.backend", launcher.kind)
    new_ref = control.find_run(run, uri)
    text = (f"resumed {ref.run_id} from {checkpoint}\nrun id:  {run}"
            f"{' (same run)' if run == ref.run_id else f' (new run, parent {ref.run_id})'}\nrun dir: {target}")
    return new_ref, text


def _pick(ref: control.RunRef, source: str) -> Path:
    if source == "last":
        path, _skipped = latest_good(ref.run_dir)
        if path is None:
            raise UserError.single("--from", f"run {ref.run_id} has no verified resume checkpoint",
                                   "use --from best or --from PATH")
        return path
    if source == "best":
        best_dir = ref.run_dir / "checkpoints" / "best"
        good = [p for p in best_dir.glob("*.ckpt") if verify(p) is None] if best_dir.is_dir() else []
        if not good:
            raise UserError.single("--from", f"run {ref.run_id} has no verified best checkpoint",
                                   "set checkpoint.monitor in the spec, or use --from last")
        return max(good, key=lambda p: p.stat().st_mtime)
    path = Path(source)
    problem = verify(path) if path.is_file() else "no such file"
    if problem:
        raise UserError.single("--from", f"{source}: {problem}", "give last, best, or a verified .ckpt path")
    return path


def _seed_checkpoint(checkpoint: Path, run_dir: Path) -> None:
    """Copy the chosen checkpoint (and manifest) in as the new run's first resume point."""
    import torch

    step = torch.load(checkpoint, map_location="cpu", weights_only=False).get("global_step", 0)
    dest = resume_dir(run_dir) / f"step-{int(step):09d}.ckpt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, dest)
    shutil.copyfile(manifest_path(checkpoint), manifest_path(dest))
