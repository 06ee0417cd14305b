"""bench/results.md and bench/results.png from results.json: the table of figures (each with its spread where it
has one), where trainctl's added time goes, and each figure ÷ its goal as a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3f}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"
    return f"{v}{unit}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# trainctl benchmarks" + (" (--quick: smoke figures only)" if results.get("quick") else ""),
        "",
        f"{results['started']} · {m['cpu']} · {m['cores']} cores · {m['mem_gb']} GiB · Python {m['python']} · "
        f"torch {m['torch']} · pytorch-lightning {m['pytorch_lightning']} · mlflow {m['mlflow']} · "
        f"submitit {m['submitit']} · commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''} · "
        f"load avg at start {m['load_avg_1m_at_start']:.2f}",
        "",
        "| figure | value | goal | met | what |",
        "|---|---|---|---|---|",
    ]
    for key, r in results["ratios"].items():
        unit = "" if r["unit"] == "x" else f" {r['unit']}"
        goal = "—" if r["goal"] is None else f"≤ {_fmt(r['goal'])}{unit}"
        met = "skipped" if r.get("skipped") else {True: "yes", False: "**no**", None: "—"}[r["met"]]
        value = _fmt(r["value"]) + ("" if r["value"] is None else unit)
        spread = r.get("spread") or {}
        if spread.get("ci95"):  # the median of the rounds' pairs and its 95 % interval (bench/alternate.py)
            lo, hi = spread["ci95"]
            value += f" (95 %: {_fmt(lo)} to {_fmt(hi)}, {spread['n']} pairs)"
        lines.append(f"| `{key}` | {value} | {goal} | {met} | {r['what']}"
                     + (f" ({r['reason']})" if r.get("skipped") and r.get("reason") else "") + " |")
    cpu = results.get("cpu_ddp") or {}
    for w, d in cpu.items():
        if not isinstance(d, dict) or "step_ms" not in d:
            continue
        lines += ["", f"CPU DDP `{w}` (hidden {d['hidden']}, batch {d['batch']}): median step ms " +
                  ", ".join(f"{k} {v:.3f}" for k, v in d["step_ms"].items()) +
                  (f"; raw ÷ anchor raw {d['raw_vs_anchor_raw']:.3f}" if "raw_vs_anchor_raw" in d else "") +
                  (f"; plain Lightning ÷ raw {d['plain_lightning_ratio']:.3f}" if "plain_lightning_ratio" in d
                   else "")]
    for w, d in cpu.items():  # where trainctl's added time goes: the ladder, then the hooks that cost most
        if not isinstance(d, dict) or not {"raw", "lightning", "worker", "trainctl"} <= set(d.get("step_ms", {})):
            continue
        ms = d["step_ms"]
        lines += ["", f"Where the time goes, `{w}` (median step, ms; each row adds to the one above):", "",
                  "| path | step | added by this row |", "|---|---|---|",
                  f"| raw DDP loop | {ms['raw']:.3f} | |",
                  f"| plain Lightning Trainer (anchor's: no logger, `self.log` per step) | {ms['lightning']:.3f} | "
                  f"{ms['lightning'] - ms['raw']:+.3f} |",
                  f"| trainctl's worker path, in-process, no tracking (callbacks, grad norm, agreed stop, data "
                  f"path, watchdog) | {ms['worker']:.3f} | {ms['worker'] - ms['lightning']:+.3f} |",
                  f"| `trainctl submit` (submitit ranks, MetricsSink to the embedded MLflow store) | "
                  f"{ms['trainctl']:.3f} | {ms['trainctl'] - ms['worker']:+.3f} |"]
        hooks = d.get("profile_hooks_ms_per_step")
        if hooks:
            top = [(k, v) for k, v in hooks.items() if not k.startswith(("run_training_batch", "[LightningModule]"))]
            lines += ["", f"Rank 0's hooks under Lightning's SimpleProfiler (its own timers inflate them; step "
                      f"{d.get('profile_step_ms', float('nan')):.3f} ms): " +
                      ", ".join(f"{k} {v:.3f}" for k, v in top[:10])]
    delivery = (results.get("tracking") or {}).get("delivery")
    if delivery:
        server = delivery.get("server_cpu_us_per_point")
        lines += ["", f"Tracking delivery (batches of {delivery['points_per_batch']} points): CPU in the sending "
                  f"thread per 1000 points {delivery['client_cpu_ms_per_1000_points_rest']:.1f} ms (trainctl's "
                  f"REST batch) vs {delivery['client_cpu_ms_per_1000_points_mlflow_client']:.1f} ms "
                  "(MlflowClient.log_batch)" + (f"; the MLflow server's CPU per point {server:.0f} µs, on the "
                                                  "same cores as the ranks here" if server else "")]
    sm = results.get("system_metrics")
    if sm:
        lines += ["", f"System metrics (every {sm['interval_s']:g} s, hidden {sm['hidden']}): mean step ms " +
                  ", ".join(f"{k} {v:.3f}" for k, v in sm["mean_step_ms"].items()) +
                  f"; one sample takes {sm['sample_cpu_ms']:.2f} ms of CPU in the monitor's thread, "
                  f"{100 * sm['core_share_at_default_interval']:.4f} % of a core at the default 10 s"
                  + (f"; step-time ratio {sm['ratio']:.3f} at this rate, {sm['ratio_at_default_interval']:.4f} at the "
                     "default 10 s (the cost is per sample)" if "ratio_at_default_interval" in sm else "")]
    if results.get("errors"):
        lines += ["", "Errors:"] + [f"- {k}: {v.splitlines()[0]}" for k, v in results["errors"].items()]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, r) for k, r in results["ratios"].items() if isinstance(r.get("value"), (int, float))
            and r["value"] == r["value"]]
    fig, ax = plt.subplots(figsize=(10, 0.55 * max(len(rows), 1) + 1.4))
    names, vals, colors, labels = [], [], [], []
    for key, r in rows:
        goal = r["goal"]
        v = abs(r["value"]) if key.startswith("memory_growth") else r["value"]
        rel = v / goal if goal else v
        names.append(key + ("" if goal else " (no goal: value)"))
        vals.append(rel)
        colors.append("#999999" if goal is None else ("#2e7d32" if r["met"] else "#c62828"))
        unit = "" if r["unit"] == "x" else f" {r['unit']}"
        labels.append(f"{_fmt(r['value'])}{unit}" + (f" / goal {_fmt(goal)}{unit}" if goal else ""))
    y = range(len(rows))
    ax.barh(list(y), vals, color=colors)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    for i, (v, text) in enumerate(zip(vals, labels)):
        ax.text(v, i, "  " + text, va="center", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("value ÷ goal (≤ 1 meets the goal; grey bars have no goal and show the value)")
    ax.set_xlim(0, max([*vals, 1.0]) * 1.6)
    ax.set_title("trainctl benchmarks" + (" (--quick)" if results.get("quick") else "") +
                 f" — {results['machine']['cores']} cores, torch {results['machine']['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
