"""Step-time statistics and this process's memory, as every CPU benchmark computes them."""

from __future__ import annotations

import statistics
from pathlib import Path


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def intervals_after_warmup(ends: list[float], first_epoch_steps: int) -> list[float]:
    """Intervals between consecutive step ends, from the last step of the warm-up epoch on (the anchor's rule)."""
    start = max(first_epoch_steps - 1, 0)
    return [b - a for a, b in zip(ends[start:], ends[start + 1 :])]


def _status_mib(field: str) -> float | None:
    """A size line of /proc/self/status (VmHWM, VmRSS), MiB; None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    rss = _status_mib("VmRSS")
    return float("nan") if rss is None else rss


def summary(values: list[float]) -> dict[str, float]:
    vs = sorted(values)
    return {"median": median(vs), "min": vs[0] if vs else float("nan"), "max": vs[-1] if vs else float("nan"),
            "n": len(vs)}


