"""The user's hyperparameters as MLflow params, beside the spec's.

The run's params already hold the flattened spec (logged at submit), and MLflow params are immutable: logging a
key again with another value is refused. So the module's hyperparameters (`save_hyperparameters()`, or
`self.logger.log_hyperparams(...)`) land under their own prefix, `hparams/`, where no spec key lives. A key the
run already holds with the same value is skipped (every attempt of a requeued job logs them again); a key it holds
with another value (a resume with `--set model.init_args.lr=…`) keeps its first value, and the new one is named in
the tag `trainctl.hparams_changed` instead of failing the job.
"""

from __future__ import annotations

import logging
import re
from argparse import Namespace
from typing import Any

log = logging.getLogger("trainctl.hparams")

PREFIX = "hparams/"
CHANGED_TAG = "trainctl.hparams_changed"
MAX_KEY, MAX_VALUE = 250, 6000  # MLflow's limits on a param's key and value
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow accepts alphanumerics, _ - . space : and /


def as_params(params: dict[str, Any] | Namespace) -> dict[str, str]:
    """Flatten (nested keys joined by '.'), prefix, make keys valid for MLflow and values strings within its limit."""
    from trainctl.tracking import flatten

    data = vars(params) if isinstance(params, Namespace) else dict(params)
    out: dict[str, str] = {}
    for key, value in flatten(data).items():
        name = (PREFIX + _BAD_KEY_CHARS.sub("_", str(key)).strip("/"))[:MAX_KEY]
        out[name] = str(value)[:MAX_VALUE]
    return out


def split(existing: dict[str, str], wanted: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(keys the run does not hold yet, keys it holds with another value)."""
    new = {k: v for k, v in wanted.items() if k not in existing}
    changed = {k: v for k, v in wanted.items() if k in existing and existing[k] != v}
    return new, changed


def log_new(client: Any, run_id: str, wanted: dict[str, str]) -> None:
    """Log the keys the run does not hold; name the changed ones in a tag. Raises when MLflow is unreachable."""
    from mlflow.entities import Param, RunTag

    run = client.get_run(run_id)
    new, changed = split(dict(run.data.params), wanted)
    items = [Param(k, v) for k, v in new.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per request
        client.log_batch(run_id, params=items[i : i + 100])
    if changed:
        entries = [e for e in run.data.tags.get(CHANGED_TAG, "").split("; ") if e]
        fresh = [e for e in (f"{k}={v}" for k, v in changed.items()) if e not in entries]
        log.warning("hyperparameters logged before with another value keep their first value: %s",
                    "; ".join(f"{k}={v}" for k, v in changed.items()))
        if fresh:
            client.log_batch(run_id, tags=[RunTag(CHANGED_TAG, "; ".join(entries + fresh)[:5000])])
