"""System metrics of every node, in the job's run: CPU, memory, disk, network and (with nvidia-ml-py) each GPU.

One monitor per node, on its local rank 0, samples every `tracking.system_metrics` seconds with MLflow's own
collectors (mlflow.system_metrics: psutil, pynvml) under MLflow's multi-node names, `system/<host>/<metric>`
(SystemMetricsMonitor's node_id form), so the nodes of a job never write the same key. MLflow's
SystemMetricsMonitor itself is not used: its thread asks the server for the run before every sample and stops
for good at the first failed request (a server restart silences every node for the rest of the attempt), it logs
synchronously and drops what it could not deliver, and its step counter restarts or has to be read back from the
server on a requeue. Here the points take trainctl's MetricsSink (retries while the server is down, spools what is
left at the end), and the step is whole seconds since the run was created: on every node and in every attempt the
series share one time axis, and a later attempt can only write later steps, so a requeue continues each series
without a duplicate point. Network counters count from the attempt's start, as MLflow's do.

The sampling thread sleeps between samples; one sample takes about half a millisecond of CPU (bench/system_metrics.py
measures it and the step time with and without). Off (0 or null) starts nothing and imports nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainctl.injob import RankInfo
    from trainctl.rundir import JobFile

log = logging.getLogger("trainctl.system_metrics")

PREFIX = "system/"
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_.\- ]")  # what an MLflow metric key may not hold (and '/', the separator)


def key_prefix(host: str) -> str:
    """`system/<host>/`: MLflow's node_id form, the host made a valid key part."""
    return f"{PREFIX}{_NOT_IN_KEY.sub('_', host) or 'host'}/"


class StepClock:
    """Whole seconds since `t0`, strictly increasing: two samples never share a step, even within one second."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.last = -1

    def step(self, now: float) -> int:
        self.last = max(int(now - self.t0), self.last + 1)
        return self.last


class SystemMetrics:
    def __init__(self, uri: str, run_id: str, host: str, interval_s: float, t0: float, spool_dir: Path) -> None:
        from trainctl.metrics import MetricsSink

        self.prefix = key_prefix(host)
        self.interval_s = interval_s
        self.clock = StepClock(t0)
        self.sink = MetricsSink(uri, run_id, spool_dir, flush_every_s=max(1.0, interval_s),
                                spool_tag=self.prefix[len(PREFIX):-1])
        self.samples = 0
        self.sample_cpu_s = 0.0  # CPU time the sampling itself took (thread time), for bench/system_metrics.py
        self._stop = threading.Event()
        self._failed = False
        self.thread = threading.Thread(target=self._loop, name="trainctl-system-metrics", daemon=True)

    def start(self) -> SystemMetrics:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Take a last sample, deliver for at most timeout_s, spool the rest (`trainctl sync` uploads it). Short:
        rank 0 still has its checkpoint and verdict to record within the scheduler's grace time."""
        self._stop.set()
        self.thread.join(timeout=timeout_s)
        self.sink.close(timeout_s=timeout_s)

    def _loop(self) -> None:
        try:
            collectors = _collectors()
        except Exception as exc:  # psutil missing or broken: training goes on without system metrics
            log.warning("no system metrics on this node: %s: %s", type(exc).__name__, exc)
            return
        next_at = time.monotonic()
        while True:
            next_at += self.interval_s
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                break
            self._sample(collectors)
            if time.monotonic() - next_at > self.interval_s:  # starved for a whole interval: no catch-up burst
                next_at = time.monotonic()
        self._sample(collectors)  # the state at the end of the attempt, whatever ended it

    def _sample(self, collectors: list[Any]) -> None:
        t0 = time.thread_time()
        values: dict[str, float] = {}
        try:
            for c in collectors:
                c.collect_metrics()
                values.update(c.aggregate_metrics())
                c.clear_metrics()
        except Exception as exc:
            if not self._failed:
                log.warning("a system metric could not be read: %s: %s", type(exc).__name__, exc)
            self._failed = True
        if values:
            self.sink.add({self.prefix + k: v for k, v in values.items()}, self.clock.step(time.time()))
            self.sink.wake.set()
        self.samples += 1
        self.sample_cpu_s += time.thread_time() - t0


def _collectors() -> list[Any]:
    """MLflow's collectors: CPU and memory, disk, network; NVIDIA (nvidia-ml-py) or AMD GPUs where there are."""
    import psutil
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    out: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        out.append(GPUMonitor())
    except Exception:
        try:
            from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

            out.append(ROCMMonitor())
        except Exception:
            log.debug("no GPU metrics: neither NVML (nvidia-ml-py) nor ROCm SMI answers here")
    psutil.cpu_percent()  # the first call only starts psutil's CPU counter
    return out


class _Off:
    def stop(self, timeout_s: float = 2.0) -> None:
        """Nothing was started."""


OFF = _Off()


def start(interval_s: float | None, job: JobFile, rank: RankInfo, run_dir: Path) -> SystemMetrics | _Off:
    """The node's monitor on its local rank 0 when interval_s is set (steps count from the run's creation at
    submit); otherwise, and on the other ranks, nothing."""
    if not interval_s or rank.local_rank != 0:
        return OFF
    return SystemMetrics(job.tracking_uri, job.run_id, rank.host, interval_s, job.created, run_dir / "spool").start()
