"""The CLI's sweep commands: validate, submit (and --dry-run), status, cancel, resume. A sweep is addressed by its
parent run's id, so `status|cancel|resume SWEEP` find it like any run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Any

from trainctl import control, store_read, stores, tracking
from trainctl.errors import Problem, UserError
from trainctl.rundir import run_dir_for
from trainctl.runstate import State
from trainctl.spec import Spec, apply_override, parse_spec, read_yaml
from trainctl.sweep import driver, engine, runs
from trainctl.sweep.layout import SweepFile, trial_dir
from trainctl.sweep.space import (
    SweepConfig,
    assignments,
    check_trials,
    missing_paths,
    parse_sweep,
    read_sweep,
    sample_points,
)

BACKENDS = ("local", "slurm", "ray")
DRIVER_STOP_S = 10.0


def is_sweep(path: str) -> bool:
    return "sweep" in read_yaml(path)


def load(path: str, overrides: list[str], backend: str | None = None) -> tuple[Spec, SweepConfig]:
    """The base spec and the sweep, with every problem of both (and of the trials' specs) at once."""
    raw = read_yaml(path)
    problems: list[Problem] = []
    for assignment in [*overrides, *([f"backend.kind={backend}"] if backend else [])]:
        try:
            apply_override(raw, assignment)
        except UserError as err:
            problems += err.problems
    spec = None
    cfg, found = read_sweep(raw.pop("sweep", None))
    problems += found
    try:
        spec = parse_spec(raw, path, from_source=True)
    except UserError as err:
        problems += err.problems
    if spec is not None and spec.backend.kind.value not in BACKENDS:
        problems.append(Problem("backend.kind", f"a sweep runs on {', '.join(BACKENDS)}, not "
                                f"{spec.backend.kind.value}", f"use backend.kind {', '.join(BACKENDS)}"))
    if spec is not None:
        problems += missing_paths(cfg, spec.to_dict())
    if not problems:  # each trial's spec, once the sweep and the base spec are sound
        problems += check_trials(raw, cfg, path)
    if problems or spec is None:
        raise UserError(problems, path)
    return spec, cfg


def dry_run(spec: Spec, cfg: SweepConfig) -> str:
    sweep_dir = run_dir_for(spec.workdir, spec.name, "SWEEP_ID")
    points = sample_points(cfg) if cfg.method == "grid" else []
    lines = [f"sweep of {cfg.trials} trials ({cfg.method}, seed {cfg.seed}), at most {cfg.max_concurrent} at once, "
             f"ranked by {cfg.mode} {cfg.metric}; pruner {cfg.pruner['kind']}"]
    if points:
        lines += [f"  trial {i}: --set {' --set '.join(assignments(p))}" for i, p in enumerate(points)]
    else:
        lines += [f"  {path}: {json.dumps(d.to_raw())}" for path, d in cfg.space.items()]
        lines.append(f"  each trial asks Optuna ({cfg.method}) for its values when it first starts")
    if spec.backend.kind.value == "slurm":
        from trainctl.sweep import slurm

        lines += ["one SLURM job array, this sbatch script:", slurm.render(spec, sweep_dir, cfg.trials,
                                                                            cfg.max_concurrent)]
    elif spec.backend.kind.value == "ray":
        from trainctl.launchers.ray.submit import LAUNCHER as RAY

        lines += [f"a driver on this machine (python -m trainctl.sweep.driver {sweep_dir}) fixes each trial's values "
                  "and run, then submits it as one Ray job (trial 0 shown):",
                  RAY.dry_run(spec, trial_dir(sweep_dir, 0))]
    else:
        from trainctl.launchers.local.submit import LAUNCHER

        job = LAUNCHER.dry_run(spec, trial_dir(sweep_dir, 0)).splitlines()[:-1]
        lines += [f"a driver on this machine (python -m trainctl.sweep.driver {sweep_dir}) starts each trial as:",
                  *job, f"  callable: trainctl.sweep.trial.run_trial({str(sweep_dir)!r}, <trial index>)"]
    return "\n".join(lines)


@dataclasses.dataclass
class Submitted:
    sweep_id: str | None  # None for a dry run
    uri: str
    backend: str
    text: str


def submit(path: str, overrides: list[str], backend: str | None, dry: bool, import_dirs: list[str]) -> Submitted:
    from trainctl import mlflow_server

    spec, cfg = load(path, overrides, backend)
    uri = control.resolve_uri(spec)
    spec = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, uri=uri))
    if dry:
        return Submitted(None, uri, spec.backend.kind.value, dry_run(spec, cfg))
    if spec.backend.kind.value == "ray":  # a cluster that can never hold a trial: refused now, as a single job is
        from trainctl.launchers.ray.submit import check_cluster

        check_cluster(spec, spec.backend.ray.address)
    started = mlflow_server.serve_if_missing(uri, Path(spec.workdir))
    tracking.wait_for_server(uri, timeout_s=60.0 if started else 30.0)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kind = spec.backend.kind.value
    parent = runs.create_parent(spec, cfg, uri, kind, source=path)
    stores.remember(uri)
    sd = run_dir_for(spec.workdir, spec.name, parent)
    SweepFile(parent, uri, kind, spec.to_dict(), cfg.to_raw(), import_dirs, str(Path(path).absolute())).write(sd)
    engine.create(sd, cfg)
    tracking.client(uri).set_tag(parent, "trainctl.run_dir", str(sd))
    sched, detail = _start(spec, cfg, sd, list(range(cfg.trials)), resume=False)
    tracking.set_state(uri, parent, State.RUNNING, **{"trainctl.scheduler_job_id": sched})
    return Submitted(parent, uri, kind, f"sweep id:  {parent}\nsweep dir: {sd}\nbackend:   {kind} ({detail})\n"
                     f"tracking:  {uri}\nrun page:  {tracking.run_page(uri, parent)}\n"
                     f"status:    trainctl status {parent}")


def _start(spec: Spec, cfg: SweepConfig, sd: Path, indices: list[int], resume: bool) -> tuple[str, str]:
    if spec.backend.kind.value == "slurm":
        from trainctl.sweep import slurm

        array = slurm.submit(spec, sd, indices, cfg.max_concurrent)
        return array, f"SLURM array {array}: {len(indices)} trials, at most {cfg.max_concurrent} at once (%" \
                      f"{cfg.max_concurrent})"
    pid = driver.start_driver(sd, resume=resume)
    return str(pid), f"driver pid {pid}: {len(indices)} trials, at most {cfg.max_concurrent} at once"


def wait(sweep_id: str, uri: str, say: Any = print, poll_s: float = 2.0) -> int:
    """Follow the sweep until its parent run ends; exit 0 when FINISHED."""
    seen = -1
    while True:
        rec = store_read.get_run(uri, sweep_id)
        state = tracking.state_of(rec.tags, rec.status) if rec else State.FAILED
        told = _told(Path(rec.tags.get("trainctl.run_dir", ""))) if rec else 0
        if told != seen:
            seen = told
            say(f"sweep {sweep_id[:8]}: {told} trials ended" + (best_so_far(rec.tags) if rec else ""))
        if state.terminal:
            say(f"sweep {sweep_id}: {state.value}: {rec.tags.get('trainctl.reason', '') if rec else ''}")
            return 0 if state is State.FINISHED else 1
        time.sleep(poll_s)


def best_so_far(tags: dict[str, str]) -> str:
    """The parent's best trial as people read metrics (6 significant digits); its tag keeps the exact value."""
    best, value = tags.get("trainctl.best_trial_index"), tags.get("trainctl.best_value", "")
    if not best:
        return ""
    with contextlib.suppress(ValueError):
        value = f"{float(value):.6g}"
    return f"; best so far: trial {best} ({value})"


def _told(sd: Path) -> int:
    from trainctl.sweep.layout import read_json

    return len((read_json(sd / "told.json") or {}).get("told", {}))


# ---------------------------------------------------------------- status, cancel, resume


def rows(ref: control.RunRef) -> tuple[SweepFile, SweepConfig, list[dict[str, Any]]]:
    sd = ref.run_dir
    sf = SweepFile.read(sd)
    cfg = parse_sweep(sf.sweep)
    with contextlib.suppress(Exception):  # the ledger is as fresh as the trials' attempt logs
        runs.settle(sd)
    out = []
    for rec in runs.children(ref.uri, ref.run_id):
        child = control.ref_of(ref.uri, rec)
        if not child.state.terminal:
            with contextlib.suppress(Exception):
                child = control.reconcile(child)
        index = int(rec.tags.get("trainctl.trial", "-1"))
        from trainctl.progress import training_step
        from trainctl.sweep.layout import read_json

        metric = read_json(trial_dir(sd, index) / "metric.json") or {}
        value = metric.get("value", rec.metrics.get(cfg.metric))
        out.append({"trial": index, "run_id": rec.run_id, "state": child.state.value, "value": value,
                    "step": metric.get("step", training_step(rec.metric_steps)),
                    "attempts": int(rec.tags.get("trainctl.attempt", "0") or 0),
                    "pruned": rec.tags.get("trainctl.pruned_rung"), "overrides": json.loads(
                        rec.tags.get("trainctl.overrides", "{}"))})
    sign = 1 if cfg.mode == "min" else -1
    out.sort(key=lambda r: (r["value"] is None or r["state"] != "FINISHED" or r["pruned"] is not None,
                            sign * r["value"] if r["value"] is not None else 0, r["trial"]))
    return sf, cfg, out


def status(ref: control.RunRef, as_json: bool) -> str:
    _, cfg, table = rows(ref)
    ref = control.find_run(ref.run_id, ref.uri)
    head = {"sweep_id": ref.run_id, "name": ref.name, "status": ref.state.value, "backend": ref.backend,
            "scheduler_job_id": ref.scheduler_job_id, "trials": cfg.trials, "started": len(table),
            "max_concurrent": cfg.max_concurrent, "metric": cfg.metric, "mode": cfg.mode,
            "best_trial": ref.tags.get("trainctl.best_trial"), "reason": ref.tags.get("trainctl.reason", ""),
            "run_dir": str(ref.run_dir)}
    if as_json:
        return json.dumps({**head, "trial_runs": table}, indent=2)
    from trainctl.table import fit, short_names
    from trainctl.table import table as columns

    sched = f"SLURM array {ref.scheduler_job_id}" if ref.backend == "slurm" else f"driver pid {ref.scheduler_job_id}"
    lines = [f"sweep {ref.run_id}  {ref.name}  {ref.state.value}  ({ref.backend}, {sched})",
             f"  {len(table)} of {cfg.trials} trials started, at most {cfg.max_concurrent} at once; ranked by "
             f"{cfg.mode} {cfg.metric}", *([f"  {head['reason']}"] if head["reason"] else [])]
    # One column per searched path, headed by its shortest distinct tail (lr, hidden); --json has every value whole.
    paths = list(dict.fromkeys([*cfg.space, *(k for r in table for k in r["overrides"])]))
    names = short_names(paths)

    def shown(v: Any) -> str:  # a string with a newline or tab is quoted, so that it stays on its row
        text = "-" if v is None else f"{v:.4g}" if isinstance(v, float) else v if isinstance(v, str) and \
            v.isprintable() else json.dumps(v, ensure_ascii=False)
        return fit(text, 40)

    numeric = [all(type(r["overrides"].get(p)) in (int, float, type(None)) for r in table) for p in paths]
    cells = [[str(r["trial"]), f"PRUNED@{r['pruned']}" if r["pruned"] else r["state"],
              "-" if r["value"] is None else f"{r['value']:.6g}", "-" if r["step"] is None else str(r["step"]),
              str(r["attempts"]), r["run_id"], *(shown(r["overrides"].get(p)) for p in paths)] for r in table]
    lines += columns(["TRIAL", "STATE", cfg.metric, "STEP", "ATT", "RUN ID", *(names[p] for p in paths)], cells,
                     right={0, 2, 3, 4, *(6 + i for i, n in enumerate(numeric) if n)})
    legend = [f"{names[p]} = {p}" for p in paths if names[p] != p]
    return "\n".join(lines + ([f"  ({', '.join(legend)})"] if legend else []))


def cancel(ref: control.RunRef, grace_s: float, say: Any) -> list[str]:
    """The sweep first (no trial starts after this), then its driver or array, then every trial still running.
    Returns what is still running (empty: nothing)."""
    if ref.state.terminal:
        raise UserError.single("RUN_ID", f"sweep {ref.run_id} already ended {ref.state.value}", "nothing to cancel")
    tracking.set_state(ref.uri, ref.run_id, State.KILLED, reason="cancelled by the user")
    say(f"sweep {ref.run_id} is KILLED in MLflow: no further trial starts")
    left: list[str] = []
    if ref.backend == "slurm":
        from trainctl.sweep import slurm

        live = [control.ref_of(ref.uri, r) for r in runs.children(ref.uri, ref.run_id)]
        for child in live:
            if not child.state.terminal:
                tracking.set_state(ref.uri, child.run_id, State.KILLED, reason="cancelled with its sweep")
        left += slurm.cancel(ref.scheduler_job_id, grace_s, say)
        for child in live:
            if not child.state.terminal:
                control.close_last_attempt(child.run_dir, "cancelled with its sweep")
        return left
    _stop_driver(int(ref.scheduler_job_id), ref.run_dir, say)
    for _ in range(2):  # a trial that was starting as the driver stopped has its run by the second look
        live = [c for c in (control.ref_of(ref.uri, r) for r in runs.children(ref.uri, ref.run_id))
                if not c.state.terminal]
        for child in live:  # every trial KILLED first: none ends otherwise while the others are being stopped
            tracking.set_state(ref.uri, child.run_id, State.KILLED, reason="cancelled with its sweep")
        for child in live:
            left += control.cancel(child, grace_s, say).left
    return left


def _stop_driver(pid: int, sd: Path, say: Any) -> None:
    from trainctl.launchers.procs import cmdline, pid_alive

    if not pid_alive(pid) or str(sd) not in cmdline(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        import os

        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DRIVER_STOP_S
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    say(f"the sweep's driver (pid {pid}) {'still runs' if pid_alive(pid) else 'stopped'}")


def resume(ref: control.RunRef) -> str:
    """Start the trials that did not finish again, each in its own run (a new array on SLURM)."""
    from trainctl.rundir import JobFile, atomic_write_text
    from trainctl.runstate import CAUSE_FILE
    from trainctl.spec import spec_from_dict

    if not ref.state.terminal:
        raise UserError.single("RUN_ID", f"sweep {ref.run_id} is still {ref.state.value}",
                               f"wait for it, or `trainctl cancel {ref.run_id}` first")
    sf = SweepFile.read(ref.run_dir)
    cfg = parse_sweep(sf.sweep)
    todo = driver.unfinished(ref.run_dir, cfg.trials)
    if not todo:
        raise UserError.single("RUN_ID", f"every trial of sweep {ref.run_id} has ended", "nothing to resume")
    tracking.set_state(ref.uri, ref.run_id, State.RUNNING, reason=f"resumed: {len(todo)} trials")
    spec = spec_from_dict(sf.spec)
    if sf.backend == "slurm":
        for i in todo:
            td = trial_dir(ref.run_dir, i)
            if JobFile.path(td).is_file():
                atomic_write_text(td / "attempts" / CAUSE_FILE, "resume")
                tracking.set_state(ref.uri, JobFile.read(td).run_id, State.PENDING, reason="resumed with its sweep")
    sched, detail = _start(spec, cfg, ref.run_dir, todo, resume=True)
    tracking.client(ref.uri).set_tag(ref.run_id, "trainctl.scheduler_job_id", sched)
    return f"resuming sweep {ref.run_id}: trials {', '.join(map(str, todo))} ({detail})"
