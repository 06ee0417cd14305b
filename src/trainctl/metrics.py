"""Metrics that never block the training step and are never lost.

`MetricsSink` takes points in O(1) on the training thread (a deque append) and a daemon thread delivers
them in batches of up to 1000, retrying with backoff while the server is down or slow. At the
end of an attempt the sink drains for a bounded time; what is still undelivered is spooled to
`<run_dir>/spool/` as JSON lines, which `trainctl sync` uploads later.

The user's hyperparameters (trainctl.hparams) take the same path: queued on the training thread, logged by the
delivery thread, spooled (`params-*.json`) when undeliverable.

On a resumed attempt the sink drops points at or below the last step MLflow already holds for that key:
the resumed run replays those steps exactly, so the history keeps every step once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("trainctl.metrics")

BATCH = 1000  # MLflow's per-request metric limit
LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"

Point = tuple[str, float, int, int]  # key, value, step, timestamp (ms)
Send = Callable[[str, list[Point]], None]  # (run_id, points); raises when they were not stored


def batch_sender(uri: str) -> Send:
    """How a batch reaches the tracking store.

    A server gets the REST call MlflowClient.log_batch would make, built here as plain JSON: the client's
    entity → protobuf → JSON conversion costs ≈ 17 ms of CPU per 1000 points, ≈ 3 ms this way, and that CPU is
    taken (with the GIL) from rank 0's training thread. Credentials, TLS settings and retries are MLflow's own
    (the same host credentials and http_request). Any other store (sqlite, file) goes through MlflowClient.
    """
    if uri.split("://", 1)[0] in ("http", "https"):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request_safe

        creds = get_default_host_creds(uri)

        def post(run_id: str, points: list[Point]) -> None:
            metrics = [{"key": k, "value": json_double(v), "timestamp": ts, "step": s} for k, v, s, ts in points]
            http_request_safe(creds, LOG_BATCH, "POST", json={"run_id": run_id, "metrics": metrics})

        return post
    return client_sender(uri)


def client_sender(uri: str) -> Send:
    """MlflowClient.log_batch: any store (the REST path's baseline in bench/tracking.py)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)

    def log_batch(run_id: str, points: list[Point]) -> None:
        client.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, s, ts in points], synchronous=True)

    return log_batch


def json_double(value: float) -> float | str:
    """A double as protobuf's JSON mapping writes it: NaN and ±inf are strings (bare NaN is not JSON)."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class MetricsSink:
    def __init__(self, uri: str, run_id: str, spool_dir: Path, flush_every_s: float = 0.5,
                 high_water: dict[str, int] | Callable[[], dict[str, int]] | None = None, spool_tag: str = "") -> None:
        """high_water: the highest step MLflow holds per key (points at or below are dropped), or a function that
        asks MLflow for it: called by the delivery thread before its first send, so a server that is down when
        the attempt starts delays nothing."""
        self.uri, self.run_id, self.spool_dir = uri, run_id, spool_dir
        self.spool_tag = f"-{spool_tag}" if spool_tag else ""  # sinks that may spool at the same ms: apart
        self.flush_every_s = flush_every_s
        self.ask_high_water = high_water if callable(high_water) else None
        self.high_water = {} if callable(high_water) else dict(high_water or {})
        self.pending: deque[Point] = deque()
        self.params: deque[dict[str, str]] = deque()  # hyperparameter calls not yet delivered, in order
        self.delivered = 0
        self.failures = 0
        self.failing = False  # the last delivery failed: the server is away
        self.wake = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="trainctl-metrics", daemon=True)
        self.thread.start()

    # ---- training thread
    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if step <= self.high_water.get(key, -1):
                continue
            self.pending.append((key, float(value), int(step), now))

    def add_params(self, params: dict[str, str]) -> None:
        """Queue hyperparameters (trainctl.hparams.as_params) and deliver them now; of two values logged for one
        key, the first is the run's (MLflow params are immutable)."""
        self.params.append(params)
        self.wake.set()

    def nudge(self) -> None:
        """Deliver now if a full batch is waiting; otherwise the delivery thread's timer (flush_every_s) sends it.
        Lightning calls the logger's save() after every step: waking the thread each time turned batching into
        one HTTP request per step, whose client-side work competes with the training thread."""
        if len(self.pending) >= BATCH:
            self.wake.set()

    # ---- delivery thread
    def _loop(self) -> None:
        send = batch_sender(self.uri)
        backoff = self.flush_every_s
        while True:
            self.wake.wait(timeout=backoff)
            self.wake.clear()
            params_ok = self._deliver_params()  # first: a module's hyperparameters precede its metrics
            ok = self._deliver(send) and params_ok
            backoff = self.flush_every_s if ok else min(backoff * 2, 10.0)
            if self.closed and not self.pending and not self.params:
                return

    def _deliver_params(self) -> bool:
        if not self.params:
            return True
        from mlflow import MlflowClient

        from trainctl import hparams

        while self.params:
            wanted = self.params[0]
            try:
                hparams.log_new(MlflowClient(tracking_uri=self.uri), self.run_id, wanted)
            except Exception as exc:
                if getattr(exc, "error_code", None) != "INVALID_PARAMETER_VALUE":  # down or slow: retry later
                    self.failures += 1
                    log.warning("MLflow unreachable (%s); hyperparameters kept for later", type(exc).__name__)
                    return False
                log.error("MLflow refused the hyperparameters %s: %s", sorted(wanted), exc)  # retrying cannot help
            if self.params and self.params[0] is wanted:  # close() may have spooled it meanwhile
                self.params.popleft()
        return True

    def _deliver(self, send: Send) -> bool:
        while self.pending:
            batch = [self.pending[i] for i in range(min(BATCH, len(self.pending)))]
            try:
                if self.ask_high_water is not None:
                    self.high_water = self.ask_high_water()
                    self.ask_high_water = None
                fresh = [p for p in batch if p[2] > self.high_water.get(p[0], -1)]
                if fresh:
                    send(self.run_id, fresh)
            except Exception as exc:  # server down or slow: keep the points, retry later
                self.failures += 1
                self.failing = True
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.warning("MLflow unreachable (%s); %d metric points buffered", type(exc).__name__,
                                len(self.pending))
                return False
            self.failing = False
            for _ in batch:
                self.pending.popleft()
            self.delivered += len(batch)
        return True

    def close(self, timeout_s: float = 30.0) -> int:
        """Drain for at most timeout_s; spool the rest. Returns how many points were spooled."""
        self.closed = True
        self.wake.set()
        self.thread.join(timeout=timeout_s)
        if self.params:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / f"params-{int(time.time() * 1000)}{self.spool_tag}.json"
            path.write_text(json.dumps(list(self.params)))
            self.params.clear()
            log.warning("spooled undelivered hyperparameters to %s (upload: trainctl sync %s)", path, self.run_id)
        if not self.pending:
            return 0
        points = list(self.pending)
        self.pending.clear()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / f"metrics-{int(time.time() * 1000)}{self.spool_tag}.jsonl"
        with open(path, "w") as fh:
            for k, v, s, ts in points:
                fh.write(json.dumps({"key": k, "value": v, "step": s, "timestamp": ts}) + "\n")
        log.warning("spooled %d undelivered metric points to %s (upload: trainctl sync %s)",
                    len(points), path, self.run_id)
        return len(points)


def logged_high_water(uri: str, run_id: str) -> dict[str, int]:
    """The highest step MLflow holds per metric key of the run that training logs. System metrics (`system/`)
    are left out: their steps are times, so a new attempt cannot repeat one, and reading their histories would
    slow every resume by a request per node and metric."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1) for k in keys}


def upload_spool(uri: str, run_id: str, spool_dir: Path) -> int:
    """Upload spooled hyperparameters and metric files (oldest first) and delete each once delivered. A point
    whose step MLflow already holds for its key is dropped: a later attempt replayed and delivered that step (an
    attempt that started while the server was down could not ask which steps it held)."""
    from mlflow import MlflowClient

    from trainctl import hparams

    for path in sorted(spool_dir.glob("params-*.json")):
        for wanted in json.loads(path.read_text()):
            hparams.log_new(MlflowClient(tracking_uri=uri), run_id, wanted)
        path.unlink()
    send = batch_sender(uri)
    client = MlflowClient(tracking_uri=uri)
    held: dict[str, set[int]] = {}
    sent = 0
    for path in sorted(spool_dir.glob("metrics-*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for key in {r["key"] for r in rows} - held.keys():
            held[key] = {m.step for m in client.get_metric_history(run_id, key)}
        points = []
        for r in rows:
            if int(r["step"]) not in held[r["key"]]:
                held[r["key"]].add(int(r["step"]))  # a later file may hold a replay of this step
                points.append((r["key"], float(r["value"]), int(r["step"]), int(r["timestamp"])))
        for i in range(0, len(points), BATCH):
            send(run_id, points[i : i + BATCH])
        sent += len(points)
        path.unlink()
    return sent
