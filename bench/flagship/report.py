"""The flagship's comparison: medians per label, each against the raw loop of the same attention and batch."""

from __future__ import annotations

import collections
import statistics
from typing import Any

from bench.flagship.protocol import TIMED


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per label; each label's ratio is against the raw loop with the same attention and batch."""
    by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in runs:
        if "tokens_per_s" in r:
            by[r["label"]].append(r)
    med = {k: statistics.median(r["tokens_per_s"] for r in rs) for k, rs in by.items()}
    med_wall = {k: statistics.median(r["tokens_per_s_wall"] for r in rs) for k, rs in by.items()}
    summary: dict[str, Any] = {}
    for label, rs in by.items():
        base = next((k for k, r in by.items() if r[0]["variant"] == "raw" and r[0]["attention"] == rs[0]["attention"]
                     and r[0]["batch"] == rs[0]["batch"]), None)
        tps, wall = med[label], med_wall[label]
        fpt, peak = rs[0]["fpt"], rs[0].get("peak_flops")
        summary[label] = {
            "variant": rs[0]["variant"], "attention": rs[0]["attention"], "batch": rs[0]["batch"],
            "runs": len(rs), "tokens_per_s": tps, "tokens_per_s_each": [r["tokens_per_s"] for r in rs],
            "step_ms": 1e3 * rs[0]["tokens_per_step"] / tps, "tokens_per_s_wall": wall,
            "mfu": tps * fpt / peak if peak else None, "mfu_wall": wall * fpt / peak if peak else None,
            "baseline": base,
            "ratio_vs_raw": tps / med[base] if base else None,
            "ratio_vs_raw_wall": wall / med_wall[base] if base else None,
            "final_loss": [r.get("final_loss") for r in rs], "strategy": rs[0].get("strategy"),
            "peak_mem_gib": rs[0].get("peak_mem_gib"), "first_step_s": [r.get("first_step_s") for r in rs],
        }
    return summary


def table(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"device: {meta.get('device_name')}  torch {meta.get('torch')}  batch {meta.get('batch')} x "
             f"{meta.get('block_size')} tokens  compile={meta.get('compile')} mode={meta.get('compile_mode')}  "
             f"attention={meta.get('attention')}  precision={meta.get('precision')}",
             f"{'variant':<26} {'step ms':>8} {'tokens/s':>11} {'MFU':>7} {'ratio':>7} {'wall tok/s':>11} "
             f"{'wall ratio':>10}  strategy"]
    order = sorted(summary, key=lambda k: (summary[k]["batch"], str(summary[k]["attention"]),
                                           TIMED.index(summary[k]["variant"])))
    for v in order:
        s = summary[v]
        mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] else "-"
        ratio = f"{s['ratio_vs_raw']:.3f}" if s["ratio_vs_raw"] else "-"
        wr = f"{s['ratio_vs_raw_wall']:.3f}" if s["ratio_vs_raw_wall"] else "-"
        lines.append(f"{v:<26} {s['step_ms']:8.2f} {s['tokens_per_s']:11.0f} {mfu:>7} {ratio:>7} "
                     f"{s['tokens_per_s_wall']:11.0f} {wr:>10}  {s['strategy']}")
    return "\n".join(lines)
