"""Run every CPU benchmark; write bench/results.json, bench/results.md and bench/results.png.

    python -m bench.run_all                      # make bench: the full set (≈ 20-30 min on 2 cores)
    python -m bench.run_all --quick --out /tmp/r.json   # the smoke set the tests run (< 90 s): same keys

Each ratio is measured in one run of this script, its A and B variants alternated, several repetitions, medians
(see each module's docstring). results.json: `ratios` (one key per figure: value, goal, unit, met), the
sections' full details, the machine and versions. --quick runs one short repetition of each, with trainctl's
worker path started in-process instead of `trainctl submit` for the CPU-DDP and memory figures, and no launch
timing (marked skipped): its numbers show that the benchmarks run, not how fast trainctl is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import checkpointing, cli_latency, cpu_ddp, launch, memory, system_metrics, tracking, tracking_load
from bench.common import ROOT, machine, median

# key: (goal, unit, "max" = value must be ≤ goal, description)
GOALS: dict[str, tuple[float | None, str, str]] = {
    "cpu_ddp_ratio": (1.03, "x", "CPU DDP step, trainctl ÷ raw DDP loop (hidden 1024, batch 256, 2 gloo ranks)"),
    "cpu_ddp_added_ms": (0.5, "ms", "CPU DDP step, trainctl - raw DDP loop (hidden 64, batch 32)"),
    "tracking_ratio": (1.01, "x", "step logging every step to a local MLflow server ÷ no logger (hidden 1024)"),
    "tracking_ratio_tiny": (1.01, "x", "the same on hidden 64, batch 32 (3 points a step, ≈ 1000 points/s)"),
    "checkpoint_blocking_ratio": (0.10, "x", "loop blocked per checkpoint ÷ sync torch.save + fsync (≈ 1 GB)"),
    "checkpoint_write_slowdown": (None, "x", "step time while the background write runs ÷ without"),
    "launch_local_first_step_s": (None, "s", "submit → first step, wall: the CLI's, controller's and ranks' starts "
                                "and imports included (local)"),
    "launch_local_end_noticed_s": (2.0, "s", "job end → submit returns (local)"),
    "launch_slurm_first_step_s": (None, "s", "submit → first step, wall: the CLI's, SLURM's and ranks' starts "
                                "and imports included (SLURM)"),
    "launch_slurm_end_noticed_s": (2.0, "s", "job end → submit returns (SLURM)"),
    "cli_status_s": (0.5, "s", "`trainctl status RUN` cold, median wall (embedded sqlite store)"),
    "cli_ls_s": (0.5, "s", "`trainctl ls` cold, median wall (embedded sqlite store)"),
    "cli_logs_s": (0.5, "s", "`trainctl logs RUN` cold, median wall (embedded sqlite store)"),
    "cli_cancel_s": (0.5, "s", "`trainctl cancel RUN` of a run whose job has ended, cold, median wall (sqlite)"),
    "cli_validate_s": (3.0, "s", "`trainctl validate jobs/digits.yaml` cold, median wall (imports Lightning)"),
    "memory_peak_ratio": (None, "x", "peak RSS per rank, trainctl ÷ raw DDP loop"),
    "memory_growth_mb_per_10k_steps": (5.0, "MiB", "RSS slope over the 2nd half of a ≥ 10k-step run (abs)"),
    "tracking_load_points_per_s_sqlite": (None, "points/s", "N simulated jobs logging every step through the sink "
                                          "to the lean sqlite server: the most sustained (bench/tracking_load.py)"),
    "tracking_load_points_per_s_postgres": (None, "points/s", "the same to `make mlflow-server` (PostgreSQL, 4 "
                                            "workers)"),
    "system_metrics_ratio": (1.01, "x", "mean step, system metrics every 1 s (10x the default rate) ÷ off, "
                             "MLflow logging on (hidden 1024)"),
}


def _entry(key: str, value: Any, **detail: Any) -> dict[str, Any]:
    goal, unit, what = GOALS[key]
    ok = None
    if isinstance(value, (int, float)) and goal is not None and value == value:
        ok = abs(value) <= goal if key.startswith("memory_growth") else value <= goal
    return {"value": value, "goal": goal, "unit": unit, "met": ok, "what": what, **detail}


def _skipped(key: str, reason: str) -> dict[str, Any]:
    return {**_entry(key, None), "skipped": True, "reason": reason}


def run(quick: bool, only: set[str] | None, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    ratios: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def section(name: str, fn: Any) -> Any:
        if only and name not in only:
            return None
        t0 = time.perf_counter()
        log(f"[{name}]")
        try:
            out = fn()
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"[:4000]
            log(traceback.format_exc())
            return None
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        results[name] = out
        return out

    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp_s:
        tmp = Path(tmp_s)
        served = {"tracking", "memory", "launch", "system_metrics"}
        server = tracking.mlflow_server(tmp / "mlflow") if (not only or only & served) else contextlib.nullcontext(None)
        with server as uri:
            shared: dict[str, Any] = {}
            if quick and (not only or only & {"cpu_ddp", "tracking", "memory", "system_metrics"}):
                shared = section("quick_runs", lambda: quick_runs(uri, log)) or {}

            # ---- CPU DDP
            def cpu() -> dict[str, Any]:
                if quick:
                    raw, tc = shared["raw"], shared["mlflow"]
                    return {"tiny": {
                        "hidden": 64, "batch": 32, "epochs": 2, "reps": 1, "trainctl_variant": "worker (mlflow)",
                        "step_ms": {"raw": 1e3 * raw["step_s"], "trainctl": 1e3 * tc["step_s"]},
                        "ratio": tc["step_s"] / raw["step_s"], "added_ms": 1e3 * (tc["step_s"] - raw["step_s"]),
                        "max_rss_mb_ranks": {"raw": raw["max_rss_mb_ranks"], "trainctl": tc["max_rss_mb_ranks"]},
                        "note": "quick: trainctl's worker path in-process (not `trainctl submit`), one run each"}}
                # trainctl and raw are the ratio; anchor checks the raw loop; lightning (plain Trainer) and worker
                # (trainctl's worker path without submit/tracking) split trainctl's added time into its sources
                variants = ["raw", "trainctl", "anchor", "lightning", "worker"]
                out = {w: cpu_ddp.measure(w, 3, 3, tmp, variants, log=log) for w in ("tiny", "wide")}
                for w, (h, b) in cpu_ddp.WORKLOADS.items():  # per-hook ms per step on rank 0 (SimpleProfiler)
                    prof = cpu_ddp.profile(h, b, 3, "hooks", [])
                    out[w]["profile_hooks_ms_per_step"] = dict(list(prof["hooks_ms_per_step"].items())[:25])
                    out[w]["profile_step_ms"] = 1e3 * prof["step_s"]
                return out

            cpu_out = section("cpu_ddp", cpu)
            if cpu_out:
                if "wide" in cpu_out:
                    w = cpu_out["wide"]
                    ratios["cpu_ddp_ratio"] = _entry("cpu_ddp_ratio", w["ratio"], step_ms=w["step_ms"])
                else:
                    ratios["cpu_ddp_ratio"] = _skipped("cpu_ddp_ratio", "quick: tiny workload only")
                t = cpu_out["tiny"]
                ratios["cpu_ddp_added_ms"] = _entry("cpu_ddp_added_ms", t["added_ms"], step_ms=t["step_ms"],
                                                    ratio=t["ratio"])

            # ---- tracking
            def track() -> dict[str, Any]:
                if quick:
                    a, b = shared["mlflow"], shared["none"]
                    return {"tiny": {"hidden": 64, "batch": 32, "epochs": 2, "reps": 1,
                                     "step_ms": {"mlflow": 1e3 * a["step_s"], "no_logger": 1e3 * b["step_s"]},
                                     "ratio": a["step_s"] / b["step_s"], "points_per_run": a.get("points"),
                                     "rss_samples": a.get("rss", [])},
                            "delivery": tracking.delivery_cost(uri, batches=3)}
                # wide: 3 reps of 6 epochs (75 timed steps); tiny: 5 reps of 3 epochs (226 timed steps), its ratio
                # being the noisier one (a 2.5 ms step on 2 cores shared with the server)
                out = {w: tracking.measure(uri, w, 3 if w == "wide" else 5, 6 if w == "wide" else 3, log=log)
                       for w in ("wide", "tiny")}
                out["delivery"] = tracking.delivery_cost(uri)
                return out

            tr = section("tracking", track)
            if tr:
                if "wide" in tr:
                    ratios["tracking_ratio"] = _entry("tracking_ratio", tr["wide"]["ratio"],
                                                      step_ms=tr["wide"]["step_ms"])
                else:
                    ratios["tracking_ratio"] = _skipped("tracking_ratio", "quick: tiny workload only")
                ratios["tracking_ratio_tiny"] = _entry("tracking_ratio_tiny", tr["tiny"]["ratio"],
                                                       step_ms=tr["tiny"]["step_ms"], delivery=tr.get("delivery"))

            # ---- checkpointing
            ck = section("checkpointing", lambda: checkpointing.run(1024, 2, 12, 4) if quick
                         else checkpointing.run(4096, 5, 40, 8))
            if ck:
                ratios["checkpoint_blocking_ratio"] = _entry(
                    "checkpoint_blocking_ratio", ck["ratio"], blocked_s=median(ck["blocked_s"]),
                    sync_s=median(ck["sync_save_fsync_s"]), state_gb=ck["state_gb"], io_ratio=ck["io_ratio"])
                ratios["checkpoint_write_slowdown"] = _entry("checkpoint_write_slowdown", ck["slowdown_during_write"])

            # ---- launch
            def launch_() -> dict[str, Any]:
                if quick:
                    return {b: {"skipped": True, "reason": "quick"} for b in ("local", "slurm")}
                return launch.measure(["local", "slurm"], 3, 5, log=log, uri=uri)

            la = section("launch", launch_)
            if la:
                for b in ("local", "slurm"):
                    r = la.get(b, {})
                    for key, field in ((f"launch_{b}_first_step_s", "first_step_wall_s"),
                                       (f"launch_{b}_end_noticed_s", "end_noticed_s")):
                        ratios[key] = _skipped(key, r.get("reason", "")) if r.get("skipped") else _entry(
                            key, r[field], import_floor_s=r.get("import_floor_s"),
                            first_step_minus_imports_s=r.get("first_step_minus_imports_s"))

            # ---- CLI latency
            def cli() -> dict[str, Any]:
                if quick:
                    return {"skipped": True, "reason": "quick"}
                return cli_latency.measure(7, 6, log=log)

            cl = section("cli", cli)
            if cl:
                for c in ("status", "ls", "logs", "cancel", "validate"):
                    key = f"cli_{c}_s"
                    if cl.get("skipped"):
                        ratios[key] = _skipped(key, cl["reason"])
                    elif c == "validate":
                        ratios[key] = _entry(key, cl["validate"]["median_wall_s"], cpu_s=cl["validate"]["median_cpu_s"],
                                             floor_import_lightning_s=cl["floors_wall_s"]["import pytorch_lightning"])
                    else:
                        wall, cpu_s = cl["median_wall_s"], cl["median_cpu_s"]
                        ratios[key] = _entry(key, wall["sqlite"][c], cpu_s=cpu_s["sqlite"][c],
                                             server_wall_s=wall["server"][c], server_cpu_s=cpu_s["server"][c])

            # ---- memory
            def mem() -> dict[str, Any]:
                if quick:  # from the runs above: the raw and worker peaks, the tracking run's RSS samples
                    t = (cpu_out or {}).get("tiny", {})
                    peaks = t.get("max_rss_mb_ranks", {})
                    tiny = (tr or {}).get("tiny", {})
                    samples = tiny.get("rss_samples") or []
                    half = [p for p in samples if p[0] >= samples[-1][0] / 2] if samples else []
                    return {
                        "peak": {"peak_rss_mb": {k: max(v) for k, v in peaks.items()},
                                 "ratio": max(peaks["trainctl"]) / max(peaks["raw"]) if peaks else float("nan")},
                        "leak": {"steps": samples[-1][0] if samples else 0,
                                 "slope_mb_per_10k_steps": memory._slope(half) * 10_000 if len(half) > 1
                                 else float("nan"), "samples": samples},
                        "note": "quick: from the cpu_ddp and tracking runs (hundreds of steps, not 10k)",
                    }
                return {"peak": memory.peak(uri, 2, 3, tmp, log=log), "leak": memory.leak(uri, 10_000, tmp, log=log)}

            me = section("memory", mem)
            if me:
                ratios["memory_peak_ratio"] = _entry("memory_peak_ratio", me["peak"]["ratio"],
                                                     peak_rss_mb=me["peak"]["peak_rss_mb"])
                ratios["memory_growth_mb_per_10k_steps"] = _entry(
                    "memory_growth_mb_per_10k_steps", me["leak"]["slope_mb_per_10k_steps"],
                    steps=me["leak"]["steps"])

            # ---- system metrics (quick: against the tracking run above, one run with the monitor)
            sm = section("system_metrics", lambda: system_metrics.measure(uri, "tiny", 1, 2, 1.0, log=log,
                                                                          off_runs=[shared["mlflow"]]) if quick
                         else system_metrics.measure(uri, "wide", 3, 12, 1.0, log=log))
            if sm:
                ratios["system_metrics_ratio"] = _entry(
                    "system_metrics_ratio", sm["ratio"], mean_step_ms=sm["mean_step_ms"],
                    sample_cpu_ms=sm["sample_cpu_ms"], core_share_at_default_interval=sm[
                        "core_share_at_default_interval"])

            # ---- the tracking server's ceiling, on servers of its own (quick: sqlite, 1 and 4 jobs)
            tl = section("tracking_load", lambda: tracking_load.run(
                [1, 4] if quick else [1, 4, 16, 64], 3.0 if quick else 8.0, 20, 5,
                ["sqlite"] if quick else ["sqlite", "postgres"], 4, log=log))
            for server in ("sqlite", "postgres") if tl else ():
                key = f"tracking_load_points_per_s_{server}"
                ratios[key] = _skipped(key, "quick") if server not in tl else _entry(
                    key, tl[server]["max_points_per_s"], knee_jobs=tl[server]["knee_jobs"], lost=tl[server]["lost"],
                    p99_batch_ms=max(r["p99_batch_ms"] for r in tl[server]["rows"]))
    results["ratios"] = ratios
    results["errors"] = errors
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def quick_runs(uri: str, log: Any) -> dict[str, Any]:
    """--quick: one raw run and two runs of trainctl's worker path (MLflow every step / no logger), shared by the
    CPU-DDP, tracking and memory sections."""
    from bench.common import run_json, worker

    out = {"raw": run_json(["-m", "bench.cpu_ddp", "--child", "raw", "--hidden", "64", "--batch", "32",
                            "--epochs", "2"])}
    run_id = tracking.new_run(uri, "bench-quick")
    out["mlflow"] = worker({"hidden": 64, "batch": 32, "epochs": 2, "logger": "mlflow", "tracking_uri": uri,
                            "run_id": run_id, "rss_every": 25})
    out["mlflow"]["points"] = tracking.points_on_server(uri, run_id)
    out["none"] = worker({"hidden": 64, "batch": 32, "epochs": 2, "logger": "none"})
    for k, r in out.items():
        r.pop("intervals", None)
        log(f"  quick {k:6} step {1e3 * r['step_s']:.3f} ms")
    return out


# ======================================================================== reports


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
                  f"{100 * sm['core_share_at_default_interval']:.4f} % of a core at the default 10 s"]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated sections: cpu_ddp,tracking,checkpointing,launch,cli,memory,"
                   "system_metrics")
    p.add_argument("--merge", action="store_true", help="with --only: keep the other sections of --out")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json",
                   help="results.json; results.md and results.png are written beside it")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = run(args.quick, set(args.only.split(",")) if args.only else None, log)
    if args.merge and args.out.is_file():  # keep the other sections of an earlier run, this run's win
        earlier = json.loads(args.out.read_text())
        for key in ("cpu_ddp", "tracking", "checkpointing", "launch", "cli", "memory", "system_metrics",
                    "tracking_load", "seconds"):
            if key not in results and key in earlier:
                results[key] = earlier[key]
        results["ratios"] = {**earlier.get("ratios", {}), **results["ratios"]}
        results["ratios"] = {k: results["ratios"][k] for k in GOALS if k in results["ratios"]}
        results["errors"] = {**{k: v for k, v in earlier.get("errors", {}).items() if k not in results},
                             **results["errors"]}
        results["merged_from"] = earlier.get("started")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    args.out.with_suffix(".md").write_text(markdown(results))
    chart(results, args.out.with_suffix(".png"))
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
