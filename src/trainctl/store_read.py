"""Read an MLflow store without importing mlflow (≈ 4 s here): what `status`, `ls`, `logs` and `cancel` need.

- http(s) servers: MLflow's REST API (`runs/get`, `runs/search`, `experiments/search`) through urllib, with
  MLflow's login variables (MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN; MLFLOW_TRACKING_INSECURE_TLS).
- the embedded sqlite store: MLflow's own tables (runs, tags, latest_metrics, experiments), opened read-only.
  The schema is the one of the mlflow versions pyproject allows (>=3.17,<4); a database that lacks a table
  or column falls back to MlflowClient.
- any other store (file:, a bare path, databricks, …): MlflowClient.

Every path returns the same `RunRecord`s as MlflowClient (tests/integration/test_fast.py compares them on a real
server and a real sqlite store). The job's state (tags + MLflow's status) is written the same ways: `write_state`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    from mlflow import MlflowClient

TRAINCTL_TAG = "trainctl.backend"  # every run trainctl created has it
PAGE = 1000
TIMEOUT_S = 30.0


@dataclass
class RunRecord:
    """One run as MlflowClient.get_run shows it: info, tags and the latest value of each metric."""

    run_id: str
    experiment_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_time: int | None  # ms since the epoch
    end_time: int | None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    metric_steps: dict[str, int] = field(default_factory=dict)  # the step of each latest value


class StoreError(Exception):
    """The store answered with an error (not found is None/[] instead)."""


class StoreUnreachable(StoreError):
    """The store did not answer at all (a server down, a wrong address): not a fact about any run in it."""

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(f"{uri} does not answer: {detail}")
        self.uri = uri


def client(uri: str) -> MlflowClient:
    """MLflow's client, for what only it can do (artifacts, other store kinds); importing it takes seconds."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def kind(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return "rest"
    if uri.startswith("sqlite:///"):
        return "sqlite"
    return "client"


# ------------------------------------------------------------------ public reads


def get_run(uri: str, run_id: str) -> RunRecord | None:
    """The run with this full id, or None when the store has no such run."""
    k = kind(uri)
    if k == "rest":
        try:
            return _rest_record(_rest(uri, "runs/get", {"run_id": run_id})["run"])
        except StoreError as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc):
                return None
            raise
    if k == "sqlite":
        try:
            with _sqlite(uri) as db:
                return _sqlite_run(db, run_id)
        except sqlite3.DatabaseError:
            pass
    return _client_get(uri, run_id)


def experiments(uri: str) -> dict[str, str]:
    """Active experiments: id → name."""
    k = kind(uri)
    if k == "rest":
        out: dict[str, str] = {}
        token = None
        while True:
            body: dict[str, Any] = {"max_results": PAGE, **({"page_token": token} if token else {})}
            page = _rest(uri, "experiments/search", body, post=True)
            out.update({e["experiment_id"]: e["name"] for e in page.get("experiments", [])})
            token = page.get("next_page_token")
            if not token:
                return out
    if k == "sqlite":
        try:
            with _sqlite(uri) as db:
                rows = db.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'")
                return {str(i): n for i, n in rows}
        except sqlite3.DatabaseError:
            pass
    return {e.experiment_id: e.name for e in client(uri).search_experiments()}


def search(uri: str, limit: int | None = 50, state: str | None = None, experiment: str | None = None,
           tag: tuple[str, str] | None = None, experiment_id: str | None = None,
           hide_tag: str | None = None) -> list[RunRecord]:
    """trainctl's runs (active ones, in active experiments), newest first; `state`: the trainctl.state tag,
    `experiment`: an experiment's name (or `experiment_id`); `tag`: (key, value) a run must carry, asked of the
    store so that the answer does not grow with the experiment's other runs; all of them when limit is None.
    hide_tag: runs with this tag are left out before the limit counts (`limit` runs are returned while the store
    has that many others)."""
    exps = {experiment_id: ""} if experiment_id else experiments(uri)
    ids = [i for i, name in exps.items() if experiment is None or experiment_id or name == experiment]
    if not ids:
        return []
    k = kind(uri)
    wanted = [("trainctl.state", state)] if state else []
    wanted += [tag] if tag else []
    if k == "sqlite":
        try:
            with _sqlite(uri) as db:
                return _sqlite_search(db, ids, limit, wanted, hide_tag)
        except sqlite3.DatabaseError:
            pass
    query = " and ".join([f"tags.`{TRAINCTL_TAG}` != ''", *(f"tags.`{key}` = '{value}'" for key, value in wanted)])
    out: list[RunRecord] = []
    token = None
    while limit is None or len(out) < limit:
        n = min(PAGE, limit - len(out)) if limit else PAGE
        if k == "rest":
            body: dict[str, Any] = {"experiment_ids": ids, "filter": query, "max_results": n,
                                    "order_by": ["attributes.start_time DESC"], **({"page_token": token} if token
                                                                                   else {})}
            page = _rest(uri, "runs/search", body, post=True)
            recs = [_rest_record(r) for r in page.get("runs", [])]
            token = page.get("next_page_token")
        else:
            res = client(uri).search_runs(ids, filter_string=query, max_results=n,
                                          order_by=["attributes.start_time DESC"], page_token=token)
            recs = [_client_record(r) for r in res]
            token = res.token
        out += [r for r in recs if hide_tag is None or hide_tag not in r.tags]
        if not token:
            break
    return out


def matching_ids(uri: str, wanted: str) -> list[str]:
    """Run ids in one store equal to `wanted` (a full id) or starting with it (a prefix ≥ 6 characters)."""
    if len(wanted) == 32:
        return [wanted] if get_run(uri, wanted) is not None else []
    if kind(uri) == "sqlite":
        try:
            with _sqlite(uri) as db:
                rows = db.execute("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND "
                                  "t.key = ? AND t.value != '' WHERE r.run_uuid LIKE ? AND r.lifecycle_stage = "
                                  "'active'", (TRAINCTL_TAG, f"{wanted}%"))
                return sorted(r[0] for r in rows)
        except sqlite3.DatabaseError:
            pass
    return [r.run_id for r in search(uri, None) if r.run_id.startswith(wanted)]


# ------------------------------------------------------------------ the one write: the state


def write_state(uri: str, run_id: str, tags: dict[str, str], status: str | None, end: bool) -> None:
    """Set tags, then MLflow's status (with the end time when `end`): what MlflowClient's log_batch and
    set_terminated / update_run do, through REST for a server and in one transaction on MLflow's sqlite tables."""
    k = kind(uri)
    if k == "rest":
        _rest(uri, "runs/log-batch", {"run_id": run_id, "tags": [{"key": n, "value": v} for n, v in tags.items()]},
              post=True)
        if status:
            body: dict[str, Any] = {"run_id": run_id, "status": status}
            if end:
                body["end_time"] = int(time.time() * 1000)
            _rest(uri, "runs/update", body, post=True)
        return
    if k == "sqlite":
        with _sqlite(uri, write=True) as db, db:  # the inner `db`: one transaction, committed at the end
            if db.execute("SELECT 1 FROM runs WHERE run_uuid = ? AND lifecycle_stage = 'active'",
                          (run_id,)).fetchone() is None:
                raise StoreError(f"no active run {run_id} in {uri}")
            db.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                           [(n, v, run_id) for n, v in tags.items()])
            if status and end:
                db.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                           (status, int(time.time() * 1000), run_id))
            elif status:
                db.execute("UPDATE runs SET status = ? WHERE run_uuid = ?", (status, run_id))
        return
    from mlflow.entities import RunTag

    cl = client(uri)
    cl.log_batch(run_id, tags=[RunTag(n, v) for n, v in tags.items()])
    if end and status:
        cl.set_terminated(run_id, status=status)
    elif status and cl.get_run(run_id).info.status != status:
        cl.update_run(run_id, status=status)


# ------------------------------------------------------------------ REST


def _headers() -> dict[str, str]:
    """MLflow's own login variables, as MlflowClient reads them."""
    import base64

    env = os.environ
    h = {"Content-Type": "application/json"}
    if env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"):  # MLflow's order: basic first
        pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}".encode()
        h["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    elif env.get("MLFLOW_TRACKING_TOKEN"):
        h["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    return h


def _tls() -> ssl.SSLContext | None:
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return None


def _rest(uri: str, endpoint: str, body: dict[str, Any], post: bool = False) -> dict[str, Any]:
    """One REST call, retried like MlflowClient's (connection errors, 429 and 5xx; MLFLOW_HTTP_REQUEST_MAX_RETRIES
    times, backing off from 0.5 s): a rank's verdict must survive a server restart."""
    import urllib.error
    import urllib.request  # here: ≈ 0.1 s of imports the sqlite path does not need
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}"
    if post:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=_headers(), method="POST")
    else:
        req = urllib.request.Request(f"{url}?{urllib.parse.urlencode(body)}", headers=_headers())
    retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "") or 5)
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=_tls()) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:500]
            if (exc.code != 429 and exc.code < 500) or attempt == retries:
                raise StoreError(f"{endpoint}: HTTP {exc.code}: {text}") from None
        except OSError as exc:  # refused, reset, timed out
            if attempt == retries:
                raise StoreUnreachable(uri, f"{endpoint}: {exc}") from None
        time.sleep(min(0.5 * 2**attempt, 8.0))
    raise AssertionError("unreachable")


def _rest_record(run: dict[str, Any]) -> RunRecord:
    info, data = run["info"], run.get("data", {})
    metrics = {m["key"]: m for m in data.get("metrics", [])}
    return RunRecord(
        info["run_id"], str(info["experiment_id"]), info.get("status", ""), _int(info.get("start_time")),
        _int(info.get("end_time")), {t["key"]: t.get("value", "") for t in data.get("tags", [])},
        {k: float(m["value"]) for k, m in metrics.items()}, {k: int(m.get("step", 0)) for k, m in metrics.items()})


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


# ------------------------------------------------------------------ sqlite (MLflow's schema, read-only)


@contextlib.contextmanager
def _sqlite(uri: str, write: bool = False) -> Iterator[sqlite3.Connection]:
    """Read-only unless writing the state: neither creates a store nor migrates one (a missing file is an error
    here, never handed to MlflowClient, which would create it)."""
    path = uri.removeprefix("sqlite:///")
    if not Path(path).is_file():
        raise StoreError(f"no sqlite store at {path}")
    mode = "rw" if write else "ro"
    db = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode={mode}", uri=True, timeout=TIMEOUT_S)
    try:
        yield db
    finally:
        db.close()


def _sqlite_run(db: sqlite3.Connection, run_id: str) -> RunRecord | None:
    row = db.execute("SELECT run_uuid, experiment_id, status, start_time, end_time FROM runs WHERE run_uuid = ?",
                     (run_id,)).fetchone()
    return None if row is None else _sqlite_fill(db, [row])[0]


def _sqlite_search(db: sqlite3.Connection, exp_ids: list[str], limit: int | None,
                   wanted: list[tuple[str, str]], hide_tag: str | None = None) -> list[RunRecord]:
    marks = ",".join("?" * len(exp_ids))
    sql = (f"SELECT r.run_uuid, r.experiment_id, r.status, r.start_time, r.end_time FROM runs r JOIN tags t ON "
           f"t.run_uuid = r.run_uuid AND t.key = ? AND t.value != '' WHERE r.lifecycle_stage = 'active' AND "
           f"r.experiment_id IN ({marks})")
    args: list[Any] = [TRAINCTL_TAG, *exp_ids]
    for key, value in wanted:
        sql += " AND EXISTS (SELECT 1 FROM tags s WHERE s.run_uuid = r.run_uuid AND s.key = ? AND s.value = ?)"
        args += [key, value]
    if hide_tag:
        sql += " AND NOT EXISTS (SELECT 1 FROM tags h WHERE h.run_uuid = r.run_uuid AND h.key = ?)"
        args.append(hide_tag)
    sql += " ORDER BY r.start_time DESC, r.run_uuid" + (" LIMIT ?" if limit is not None else "")
    args += [limit] if limit is not None else []
    return _sqlite_fill(db, db.execute(sql, args).fetchall())


def _sqlite_fill(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[RunRecord]:
    recs = {r[0]: RunRecord(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows}
    if not recs:
        return []
    ids = list(recs)
    marks = ",".join("?" * len(ids))
    for run_id, key, value in db.execute(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({marks})", ids):
        recs[run_id].tags[key] = value
    for run_id, key, value, step, is_nan in db.execute(
            f"SELECT run_uuid, key, value, step, is_nan FROM latest_metrics WHERE run_uuid IN ({marks})", ids):
        recs[run_id].metrics[key] = math.nan if is_nan else float(value)
        recs[run_id].metric_steps[key] = int(step)
    return [recs[i] for i in ids]


# ------------------------------------------------------------------ MlflowClient (other store kinds)


def _client_get(uri: str, run_id: str) -> RunRecord | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client_record(client(uri).get_run(run_id))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _client_record(run: Any) -> RunRecord:
    i = run.info
    steps = {m.key: int(m.step) for m in getattr(run.data, "_metric_objs", [])}
    return RunRecord(i.run_id, str(i.experiment_id), i.status, i.start_time, i.end_time, dict(run.data.tags),
                     dict(run.data.metrics), steps)
