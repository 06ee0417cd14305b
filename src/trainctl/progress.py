"""What `status` and `ls` show of a run: progress, start time, duration, attempts — from the store and run dir.

Progress comes from the run's latest metrics (their step is the global step; Lightning's `epoch` metric is the
0-based epoch) and the spec the run was submitted with (job.json: trainer.max_steps / max_epochs). Attempts come
from the run directory's attempts/ records (written by global rank 0).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from trainctl.rundir import JobFile
from trainctl.runstate import Attempts

if TYPE_CHECKING:
    from trainctl.control import RunRef


def _limits(ref: RunRef) -> tuple[int | None, int | None]:
    """(max_steps, max_epochs) of the run's spec; None when unknown or unlimited."""
    try:
        trainer = JobFile.read(ref.run_dir).spec.get("trainer") or {}
    except (OSError, ValueError, TypeError):
        return None, None
    steps, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    return (steps if isinstance(steps, int) and steps > 0 else None,
            epochs if isinstance(epochs, int) and epochs > 0 else None)


def duration_s(start_ms: int | None, end_ms: int | None, now: float | None = None) -> float | None:
    """Seconds from the run's start to its end, or to now while it has not ended."""
    if start_ms is None:
        return None
    end = end_ms / 1000 if end_ms else (now if now is not None else time.time())
    return max(0.0, end - start_ms / 1000)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


SYSTEM_PREFIX = "system/"  # worker/system_metrics.py's names: system/<host>/<metric>


def training_step(steps: dict[str, int]) -> int | None:
    """The latest training step among a run's metrics (a system metric's step is seconds since the run began)."""
    return max((s for key, s in steps.items() if not key.startswith(SYSTEM_PREFIX)), default=None)


def fmt_time(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def progress_of(metrics: dict[str, float], steps: dict[str, int], max_steps: int | None, max_epochs: int | None
                ) -> dict[str, Any]:
    """step (global, latest logged) of max_steps, epoch (1-based) of max_epochs. System metrics are not training
    steps (their step is seconds since the run began), so they do not count."""
    step = training_step(steps)
    epoch = metrics.get("epoch")
    epoch_n = int(epoch) + 1 if epoch is not None and epoch == epoch else None
    if epoch_n is not None and max_epochs:  # after fit, Lightning logs the epoch counter past the last epoch
        epoch_n = min(epoch_n, max_epochs)
    text = []
    if step is not None:
        text.append(f"step {step}" + (f" of {max_steps}" if max_steps else ""))
    if epoch_n is not None:
        text.append(f"epoch {epoch_n}" + (f" of {max_epochs}" if max_epochs else ""))
    return {"step": step, "max_steps": max_steps, "epoch": epoch_n, "max_epochs": max_epochs,
            "text": ", ".join(text) or "no step logged yet"}


def attempts_of(ref: RunRef) -> list[dict[str, Any]]:
    if not ref.run_dir.is_dir():
        return []
    try:
        items = Attempts(ref.run_dir).all()
    except (OSError, ValueError, TypeError):
        return []
    return [{"number": a.number, "cause": a.cause, "outcome": a.outcome, "step": a.step,
             "started": a.started, "ended": a.ended} for a in items]


def summary(ref: RunRef) -> dict[str, Any]:
    """The fields `status` adds to the run's identity: progress, times, attempts."""
    max_steps, max_epochs = _limits(ref)
    return {
        "progress": progress_of(ref.metrics, ref.metric_steps, max_steps, max_epochs),
        "start_time": fmt_time(ref.start_time), "end_time": fmt_time(ref.end_time) if ref.end_time else "",
        "duration_s": duration_s(ref.start_time, ref.end_time),
        "attempts": attempts_of(ref),
    }


def render_status(out: dict[str, Any]) -> str:
    lines = []
    for key in ("run_id", "name", "status", "backend", "scheduler_job_id", "run_dir", "reason"):
        lines.append(f"{key:17} {out[key]}")
    lines.append(f"{'progress':17} {out['progress']['text']}")
    lines.append(f"{'started':17} {out['start_time']}" + (f"  (ended {out['end_time']})" if out["end_time"] else ""))
    lines.append(f"{'duration':17} {fmt_duration(out['duration_s'])}")
    att = out["attempts"]
    lines.append(f"{'attempts':17} {len(att) or out['attempt']}")
    for a in att:
        step = f", step {a['step']}" if a["step"] is not None else ""
        lines.append(f"  #{a['number']:<3} {a['cause']:11} {a['outcome'] or 'running'}{step}")
    lines.append("metrics (latest)")
    for key, value in sorted(out["metrics"].items()):
        lines.append(f"  {key:15} {value:.6g}")
    return "\n".join(lines)


def render_ls(store: str, refs: list[RunRef]) -> str:
    lines = [f"store {store}",
             f"  {'RUN ID':34} {'NAME':24} {'STATE':9} {'STARTED':19} {'DURATION':>9} {'BACKEND':8} ATTEMPT"]
    for r in refs:
        lines.append(f"  {r.run_id:34} {r.name[:24]:24} {r.state.value:9} {fmt_time(r.start_time):19} "
                     f"{fmt_duration(duration_s(r.start_time, r.end_time)):>9} {r.backend:8} "
                     f"{r.tags.get('trainctl.attempt', '-')}")
    return "\n".join(lines)

