"""`trainctl resume RUN_ID [--from last|best|PATH]`: resubmit a run's stored spec.

From `last` the job continues the same MLflow run (its history goes on). From an older checkpoint the history
would fork, so a new run is created, linked to its parent, and starts from a verified copy of that checkpoint.
Overrides are recorded on the run as tags: params already logged cannot change. A FINISHED run whose last
checkpoint already reached trainer.max_epochs / max_steps would train nothing: that resume is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from trainctl import control, tracking
from trainctl.callbacks.checkpoint_io import manifest_path, verify
from trainctl.callbacks.resume_checkpoint import latest_good, resume_dir
from trainctl.errors import UserError
from trainctl.launchers import registry
from trainctl.rundir import JobFile, atomic_write_text, use_import_dirs
from trainctl.runstate import CAUSE_FILE, State
from trainctl.spec import Spec, apply_override, parse_spec


def resume(run_id: str, uri: str | None, source: str, overrides: list[str], backend: str | None
           ) -> tuple[control.RunRef | None, str]:
    """uri None: the run is searched like every run-addressed command does (control.find_run)."""
    ref = control.reconcile(control.find_run(run_id, uri))
    uri = ref.uri
    if not ref.state.terminal:
        raise UserError.single("RUN_ID", f"run {run_id} is still {ref.state.value}",
                               f"wait for it, or `trainctl cancel {run_id}` first")
    if not JobFile.path(ref.run_dir).is_file():
        raise UserError.single("RUN_ID", f"the run directory {ref.run_dir} is gone", "resume needs the run's files")
    job = JobFile.read(ref.run_dir)
    use_import_dirs(job.import_dirs)  # the spec's classes are imported again to check the overrides
    raw = json.loads(json.dumps(job.spec))
    assignments = overrides + ([f"backend.kind={backend}"] if backend else [])
    for assignment in assignments:
        apply_override(raw, assignment)
    spec = parse_spec(raw, f"run {run_id}", check_classes=False)
    checkpoint = _pick(ref, source)
    if source == "last" and ref.state is State.FINISHED:
        done = _nothing_to_train(checkpoint, spec)
        if done:
            why, more = done
            raise UserError.single("--from", f"run {ref.run_id} FINISHED and its last checkpoint {why}: resuming "
                                   "it would train nothing",
                                   f"raise the limit with --set, e.g. `trainctl resume {ref.run_id[:8]} --set "
                                   f"{more}`")
    spec = parse_spec(raw, f"run {run_id}")  # the overrides against the classes' signatures too
    launcher = registry.load(spec.backend.kind.value).LAUNCHER
    cl = tracking.client(uri)
    if source == "last":
        target, new_job = ref.run_dir, dataclasses.replace(job, spec=spec.to_dict(), backend=launcher.kind,
                                                           master_port=launcher.rendezvous_port())
        new_job.write(target)
        atomic_write_text(target / "attempts" / CAUSE_FILE, "resume")
        run = ref.run_id
    else:  # a new run, made as `submit` makes one
        new_job, target = control.create_job(spec, uri, launcher, ref.tags.get("mlflow.source.name"),
                                             job.import_dirs)
        run = new_job.run_id
        _seed_checkpoint(checkpoint, target)
        cl.set_tag(run, "mlflow.parentRunId", ref.run_id)
        cl.set_tag(run, "trainctl.resumed_from", f"{ref.run_id}:{checkpoint.name}")
    if assignments:
        cl.set_tag(run, "trainctl.resume_overrides", json.dumps(assignments))
    cl.set_tag(run, "trainctl.backend", launcher.kind)
    tracking.set_state(uri, run, State.PENDING, reason=f"resumed from {checkpoint.name}")
    control.launch(spec, target, new_job)
    new_ref = control.find_run(run, uri)
    if run == ref.run_id:
        what = (f"continuing run {run} from its last checkpoint {checkpoint}: the same MLflow run, its history "
                "goes on")
    else:
        what = (f"started a new run {run} from {'its best checkpoint ' if source == 'best' else ''}{checkpoint}, "
                f"linked to the parent run {ref.run_id} (which stays as it ended)")
    return new_ref, f"{what}\nrun id:  {run}\nrun dir: {target}"


def _nothing_to_train(checkpoint: Path, spec: Spec) -> tuple[str, str] | None:
    """Why fitting from this checkpoint would stop at once (Lightning's max_epochs / max_steps) and an override
    that would train more, or None."""
    import torch

    try:  # mmap: only the loop counters are read, not the weights
        state: dict[str, Any] = torch.load(_counters(checkpoint), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # unreadable here: the rank reports it; nothing to refuse on
        return None
    trainer = spec.trainer or {}
    max_steps = trainer.get("max_steps", -1)
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None and max_steps in (None, -1) and trainer.get("max_time") is None:
        max_epochs = 1000  # Lightning's default when no limit is given
    step = int(state.get("global_step", 0))
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs = progress.get("processed")
    if max_steps not in (None, -1) and step >= max_steps:
        return f"is at step {step} (trainer.max_steps: {max_steps})", f"trainer.max_steps={2 * step}"
    if max_epochs not in (None, -1) and epochs is not None and epochs >= max_epochs:
        return f"has {epochs} epochs done (trainer.max_epochs: {max_epochs})", f"trainer.max_epochs={2 * epochs}"
    return None


def _pick(ref: control.RunRef, source: str) -> Path:
    if source in ("last", "best"):
        pick, other = (_last(ref.run_dir), _best) if source == "last" else (_best(ref.run_dir), _last)
        if pick is not None:
            return pick
        if other(ref.run_dir) is None:  # no other --from to point to: start over from the spec
            raise UserError.single("--from", f"run {ref.run_id} has no verified checkpoint (neither last nor best):"
                                   " nothing to resume from",
                                   f"start it over: `trainctl submit {ref.run_dir / 'spec.yaml'}`")
        if source == "last":
            raise UserError.single("--from", f"run {ref.run_id} has no verified resume checkpoint",
                                   "use --from best (it has one) or --from PATH")
        raise UserError.single("--from", f"run {ref.run_id} has no verified best checkpoint",
                               "use --from last (it has one); best checkpoints need checkpoint.monitor")
    path = Path(source)
    problem = verify(path) if path.exists() else "no such file"
    if problem:
        raise UserError.single("--from", f"{source}: {problem}", "give last, best, or a verified .ckpt path")
    return path


def _last(run_dir: Path) -> Path | None:
    """The newest verified resume checkpoint, or None."""
    return latest_good(run_dir)[0]


def _best(run_dir: Path) -> Path | None:
    """The newest verified checkpoint of checkpoints/best, or None."""
    best_dir = run_dir / "checkpoints" / "best"
    good = [p for p in best_dir.glob("*.ckpt") if verify(p) is None] if best_dir.is_dir() else []
    return max(good, key=lambda p: p.stat().st_mtime) if good else None


def _seed_checkpoint(checkpoint: Path, run_dir: Path) -> None:
    """Copy the chosen checkpoint (and manifest) in as the new run's first resume point."""
    import torch

    step = torch.load(_counters(checkpoint), map_location="cpu", weights_only=False).get("global_step", 0)
    dest = resume_dir(run_dir) / f"step-{int(step):09d}.ckpt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint.is_dir():  # a sharded (fsdp) checkpoint: its manifest names the directory's files
        shutil.copytree(checkpoint, dest)
    else:
        shutil.copyfile(checkpoint, dest)
    shutil.copyfile(manifest_path(checkpoint), manifest_path(dest))


def _counters(checkpoint: Path) -> Path:
    """The file holding the loop counters: the checkpoint, or a sharded checkpoint's meta file."""
    from trainctl.callbacks.sharded_checkpoint import META_FILE

    return checkpoint / META_FILE if checkpoint.is_dir() else checkpoint
