"""Ray's driver log split per rank: Ray prefixes each worker's line with its pid; each worker names its rank."""

from __future__ import annotations

import re

# "(RayTrainWorker pid=123, ip=10.0.0.1) text": Ray's prefix on a worker's line in the driver's log.
WORKER_LINE = re.compile(r"^\((?:\w+ )?pid=(\d+)(?:, ip=[^)]*)?\) ?(.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RANK_LINE = re.compile(r"trainctl: rank (\d+)/(\d+) on node (\S+) .*pid (\d+)")


def split_logs(text: str, sid: str) -> dict[str, str]:
    """One entry per rank (every attempt of it, in order) plus the driver's own lines.

    Each worker announces `trainctl: rank R/W on node N (... pid P)`; Ray prefixes its lines with its pid.
    """
    text = ANSI.sub("", text)
    rank_of: dict[str, str] = {}
    for line in text.splitlines():
        m = WORKER_LINE.match(line)
        if m:
            r = RANK_LINE.search(m.group(2))
            if r and r.group(4) == m.group(1):
                rank_of[m.group(1)] = r.group(1)
    parts: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = WORKER_LINE.match(line)
        if m and m.group(1) in rank_of:
            label = f"ray job {sid} rank {rank_of[m.group(1)]} (pid {m.group(1)})"
            parts.setdefault(label, []).append(m.group(2))
        else:
            parts.setdefault(f"ray job {sid} driver", []).append(line)
    ordered = sorted(parts, key=lambda k: (" rank " in k, k))
    return {k: "\n".join(parts[k]) + "\n" for k in ordered}
