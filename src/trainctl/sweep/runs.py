"""The sweep in MLflow: a parent run (params: the space; metric: the best value so far; tags: the best trial) and
one child run per trial (`mlflow.parentRunId`), which holds what a single job's run holds plus its values.

`settle` turns the trials' ends (their attempt logs) into the study's tells and the parent's best, once each, and
closes the parent when every trial has ended. Anyone may call it (a trial's rank 0 as it ends, the local driver,
`status`): the sweep's lock and its ledger (told.json) make it idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainctl import store_read, tracking
from trainctl.runstate import Attempts, State
from trainctl.spec import Spec
from trainctl.sweep import PARENT_TAG, SWEEP_ID_TAG, engine
from trainctl.sweep.layout import SweepFile, locked, read_json, trial_dir, trial_indices, write_json
from trainctl.sweep.space import SweepConfig, parse_sweep

ENDED = ("finished", "failed", "killed")


def _log(uri: str, run_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    cl = tracking.client(uri)
    for i in range(0, max(len(items), 1), 100):
        cl.log_batch(run_id, params=items[i: i + 100], tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])


def create_parent(spec: Spec, cfg: SweepConfig, uri: str, backend: str, source: str | None) -> str:
    run_id = tracking.create_run(spec, uri, backend, source=source)
    space = {f"sweep/space/{path}": json.dumps(d.to_raw()) for path, d in cfg.space.items()}
    opts = {f"sweep/{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in cfg.to_raw().items() if k != "space"}
    note = (f"sweep of {cfg.trials} trials of {spec.name} ({cfg.method}, {cfg.max_concurrent} at once, by {cfg.mode} "
            f"{cfg.metric})")
    _log(uri, run_id, {**space, **opts}, {PARENT_TAG: "parent", "mlflow.note.content": note})
    return run_id


def create_child(sf: SweepFile, spec: Spec, index: int, params: dict[str, Any], run_dir: Path) -> str:
    run_id = tracking.create_run(spec, sf.tracking_uri, sf.backend, source=sf.source or None)
    _log(sf.tracking_uri, run_id, {f"sweep/{k}": v for k, v in params.items()},
         {"mlflow.parentRunId": sf.parent_run_id, SWEEP_ID_TAG: sf.parent_run_id, "trainctl.trial": str(index),
          "trainctl.overrides": json.dumps(params), "trainctl.run_dir": str(run_dir)})
    return run_id


def why_not_start(sf: SweepFile) -> str | None:
    """A trial does not start once its sweep has ended (cancelled, or failed fast)."""
    state = tracking.current_state(sf.tracking_uri, sf.parent_run_id)
    return f"the sweep {sf.parent_run_id} is {state.value}" if state.terminal else None


@dataclass
class Ended:
    index: int
    outcome: str  # finished, failed, killed
    reason: str
    value: float | None
    pruned: dict[str, Any] | None


def ended(sweep_dir: Path, index: int) -> Ended | None:
    td = trial_dir(sweep_dir, index)
    last = Attempts(td).all()[-1:]
    if not last or last[0].outcome not in ENDED:
        return None
    metric = read_json(td / "metric.json") or {}
    return Ended(index, str(last[0].outcome), last[0].reason or "", metric.get("value"), read_json(td / "pruned.json"))


def settle(sweep_dir: Path, final: bool = False) -> dict[str, Any]:
    """Tell the study how each ended trial ended, update the parent's best; close the parent when every trial has
    ended (final: the driver is done, so whatever ended is all there is). Returns the ledger."""
    sf = SweepFile.read(sweep_dir)
    cfg = parse_sweep(sf.sweep)
    uri = sf.tracking_uri
    with locked(sweep_dir / "settle.lock"):
        ledger: dict[str, Any] = read_json(sweep_dir / "told.json") or {"told": {}, "best": None}
        told = ledger["told"]
        ends = [e for e in (ended(sweep_dir, i) for i in trial_indices(sweep_dir)) if e is not None]
        for e in ends:
            if str(e.index) in told or e.outcome == "killed":  # a killed trial may be resumed: not told yet
                continue
            params = read_json(trial_dir(sweep_dir, e.index) / "params.json") or {}
            state = "pruned" if e.pruned else "complete" if e.outcome == "finished" and e.value is not None else "fail"
            engine.tell(sweep_dir, cfg, int(params["number"]), state, e.value)
            told[str(e.index)] = {"state": state, "value": e.value, "reason": e.reason}
            if e.pruned:
                child = (read_json(trial_dir(sweep_dir, e.index) / "job.json") or {}).get("run_id")
                if child:
                    tracking.client(uri).set_tag(child, "trainctl.pruned", "true")
                    tracking.client(uri).set_tag(child, "trainctl.pruned_rung", str(e.pruned["rung"]))
        _update_best(sweep_dir, cfg, sf, ledger)
        write_json(sweep_dir / "told.json", ledger)
        _maybe_close(sweep_dir, cfg, sf, ledger, ends, final)
    return ledger


def _update_best(sweep_dir: Path, cfg: SweepConfig, sf: SweepFile, ledger: dict[str, Any]) -> None:
    done = [(int(i), t["value"]) for i, t in ledger["told"].items() if t["state"] == "complete"]
    if not done:
        return
    sign = 1 if cfg.mode == "min" else -1
    index, value = min(done, key=lambda iv: (sign * iv[1], iv[0]))
    if ledger.get("best") == [index, value, len(ledger["told"])]:
        return
    ledger["best"] = [index, value, len(ledger["told"])]
    td = trial_dir(sweep_dir, index)
    child = (read_json(td / "job.json") or {}).get("run_id", "")
    params = (read_json(td / "params.json") or {}).get("params", {})
    cl = tracking.client(sf.tracking_uri)
    cl.log_metric(sf.parent_run_id, f"best/{cfg.metric}", value, step=len(ledger["told"]))
    for key, tag in (("trainctl.best_trial", child), ("trainctl.best_trial_index", str(index)),
                     ("trainctl.best_params", json.dumps(params)), ("trainctl.best_value", repr(value))):
        cl.set_tag(sf.parent_run_id, key, tag)


def _maybe_close(sweep_dir: Path, cfg: SweepConfig, sf: SweepFile, ledger: dict[str, Any], ends: list[Ended],
                 final: bool) -> None:
    told = ledger["told"]
    if tracking.current_state(sf.tracking_uri, sf.parent_run_id).terminal:
        return
    good = [t for t in told.values() if t["state"] in ("complete", "pruned")]
    failed = [t for t in told.values() if t["state"] == "fail"]
    first_failures = min(cfg.trials, max(2, cfg.max_concurrent))
    if not good and len(failed) >= first_failures:  # the sweep reports it once instead of failing trial by trial
        tracking.set_state(sf.tracking_uri, sf.parent_run_id, State.FAILED,
                           reason=f"the first {len(failed)} trials all failed; the other trials are not started. "
                                  f"First failure: {failed[0]['reason']}")
        return
    if len([e for e in ends if e.outcome != "killed"]) < cfg.trials and not final:  # a killed one may resume
        return
    best = ledger.get("best")
    pruned = len([t for t in good if t["state"] == "pruned"])
    if best:
        tracking.set_state(sf.tracking_uri, sf.parent_run_id, State.FINISHED,
                           reason=f"{len(ends)} trials ended ({len(good) - pruned} complete, {pruned} pruned, "
                                  f"{len(failed)} failed); best: trial {best[0]} ({cfg.metric} {best[1]:.6g})")
    else:
        tracking.set_state(sf.tracking_uri, sf.parent_run_id, State.FAILED,
                           reason=f"no trial of {len(ends)} completed with a value of {cfg.metric}")


def children(uri: str, parent_run_id: str, experiment_id: str | None = None) -> list[store_read.RunRecord]:
    """The sweep's trial runs: one search (paged) for the parent's tag in the parent's experiment, so the store's
    work grows with the trials, not with the experiment's other runs."""
    if experiment_id is None:
        parent = store_read.get_run(uri, parent_run_id)
        experiment_id = parent.experiment_id if parent else None
    if experiment_id is None:
        return []
    return store_read.search(uri, None, experiment_id=experiment_id, tag=(SWEEP_ID_TAG, parent_run_id))
