"""Hand-off to MLflow's Model Registry: a FINISHED run's best checkpoint becomes a new version of a registered model.

The version's source is the run's own `checkpoints/best` artifact (`runs:/<run>/checkpoints/best`), so the registry
holds no second copy and a version always names the run and attempt that wrote it. Its tags say which metric made the
checkpoint best, and its value. `tracking.register` does this when the run ends FINISHED; `trainctl register RUN
NAME` does it by hand for a run that has ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trainctl.errors import UserError

log = logging.getLogger("trainctl.registry")

BEST = "checkpoints/best"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str | None
    monitor: str | None
    value: float | None

    @property
    def uri(self) -> str:
        """What loads it back: `models:/<name>@<alias>`, else `models:/<name>/<version>`."""
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def best_score(cl: Any, run: Any) -> tuple[str | None, float | None]:
    """The monitored metric and its best value over the run's history (the value top-k kept the best checkpoint
    for): what a version made by hand is tagged with."""
    monitor = run.data.params.get("checkpoint.monitor")
    if not monitor or monitor == "None":
        return None, None
    values = [m.value for m in cl.get_metric_history(run.info.run_id, monitor)]
    if not values:
        return monitor, None
    return monitor, (max(values) if run.data.params.get("checkpoint.mode") == "max" else min(values))


def register_best(uri: str, run_id: str, name: str, alias: str | None = None, monitor: str | None = None,
                  value: float | None = None) -> Registered:
    """Make the run's best checkpoint a new version of `name` (created when missing), move `alias` to it, and tag
    the run `trainctl.registered=<name>/<version>`. monitor/value: the top-k callback's, else read from the run."""
    cl = _client(uri)
    run = cl.get_run(run_id)
    files = [a.path for a in cl.list_artifacts(run_id, BEST)]
    if not any(f.endswith(".ckpt") for f in files):
        raise UserError.single("RUN_ID", f"run {run_id} has no best checkpoint in its artifacts ({BEST})",
                               "only a run with checkpoint.monitor set and tracking.log_checkpoints true has one")
    if monitor is None:
        monitor, value = best_score(cl, run)
    try:
        cl.create_registered_model(name, description="Best checkpoints of trainctl runs (checkpoints/best).")
    except Exception as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {"trainctl.run_id": run_id, "trainctl.attempt": run.data.tags.get("trainctl.attempt", ""),
            "trainctl.run_name": run.info.run_name or ""}
    if monitor:
        tags["trainctl.monitor"] = monitor
        if value is not None:
            tags["trainctl.monitor_value"] = repr(float(value))
            tags[monitor] = repr(float(value))
    mv = cl.create_model_version(name, source=f"runs:/{run_id}/{BEST}", run_id=run_id, tags=tags,
                                 description=f"best checkpoint of run {run.info.run_name or run_id}")
    if alias:
        cl.set_registered_model_alias(name, alias, mv.version)
    cl.set_tag(run_id, "trainctl.registered", f"{name}/{mv.version}")
    return Registered(name, str(mv.version), alias, monitor, value)


def on_finished(spec: Any, uri: str, run_id: str, top_k: Any) -> None:
    """The worker's hand-off when a run ends FINISHED (tracking.register set). Best effort: a refusal is logged and
    tagged on the run (`trainctl.register_error`), and `trainctl register` can do it later; the run stays FINISHED."""
    reg = spec.tracking.register
    if reg is None:
        return
    score = getattr(top_k, "best_model_score", None) if top_k is not None else None
    monitor = getattr(top_k, "monitor", None) if score is not None else None
    try:
        done = register_best(uri, run_id, reg.name, reg.alias, monitor, float(score) if score is not None else None)
        log.info("registered the best checkpoint as %s (version %s)", done.uri, done.version)
    except Exception as exc:
        log.warning("could not register the best checkpoint as %s: %s", reg.name, exc)
        try:
            _client(uri).set_tag(run_id, "trainctl.register_error", f"{type(exc).__name__}: {exc}"[:4000])
        except Exception:
            log.warning("could not tag the run with the registry's refusal")
