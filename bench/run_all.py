"""Run every CPU benchmark; write bench/results.json, bench/results.md and bench/results.png.

    python -m bench.run_all                      # make bench: the full set (≈ 40-60 min on 2 cores)
    python -m bench.run_all --quick --out /tmp/r.json   # the smoke set the tests run (< 90 s): same keys

Each ratio is measured in one run of this script, its A and B variants alternated in rounds until the ratio is
known to ±1.5 % or ROUNDS are spent (bench/alternate.py; each module's docstring). results.json: `ratios` (one key
per figure: value, goal, unit, met, and `spread`: the median of the rounds' paired values, its bootstrap 95 %
interval `ci95`, quartiles `iqr`, pairs `n`, `half_width_rel`), the
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

from bench import (
    checkpointing,
    cli_latency,
    cpu_ddp,
    fsdp_memory,
    launch,
    memory,
    sweep_scale,
    system_metrics,
    tracking,
    tracking_load,
)
from bench.procs import ROOT, machine
from bench.report import chart, markdown
from bench.stats import median

# rounds of A and B at least, at most (bench.alternate: more while a ratio's 95 % interval is wider than ±1.5 %),
# and the seconds one CPU DDP workload may take before it stops adding rounds
ROUNDS = (5, 12)
BUDGET_S = 900.0
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
    "cli_validate_s": (3.0, "s", "`trainctl validate jobs/digits.yaml` cold, median wall (classes read from source)"),
    "sweep_submit_1000_s": (10.0, "s", "`trainctl submit` of a 1000-trial sweep to SLURM as one (held) job array"),
    "sweep_status_1000_s": (2.0, "s", "`trainctl status SWEEP` over 1000 child runs, 1000 other runs beside, cold"),
    "memory_peak_ratio": (None, "x", "peak RSS per rank, trainctl ÷ raw DDP loop"),
    "memory_growth_mb_per_10k_steps": (5.0, "MiB", "RSS slope over the 2nd half of a ≥ 10k-step run (abs)"),
    "tracking_load_points_per_s_sqlite": (None, "points/s", "N simulated jobs logging every step through the sink "
                                          "to the lean sqlite server: the most sustained (bench/tracking_load.py)"),
    "tracking_load_points_per_s_postgres": (None, "points/s", "the same to `make mlflow-server` (PostgreSQL, 4 "
                                            "workers)"),
    "system_metrics_ratio": (1.01, "x", "mean step with system metrics at the default 10 s ÷ off, MLflow logging on "
                             "(hidden 1024): measured every 1 s (10x the rate), scaled per sample"),
    **fsdp_memory.GOALS,
}


def _entry(key: str, value: Any, **detail: Any) -> dict[str, Any]:
    goal, unit, what = GOALS[key]
    ok = None
    if isinstance(value, (int, float)) and goal is not None and value == value:
        ok = abs(value) <= goal if key.startswith("memory_growth") else value <= goal
    return {"value": value, "goal": goal, "unit": unit, "met": ok, "what": what, **detail}


def _spread(section: dict[str, Any], figure: str) -> dict[str, Any] | None:
    """A figure's bench.alternate spread (median, ci95, iqr, n, half_width_rel); None for a single run (--quick)."""
    return (section.get("spread") or {}).get(figure)


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
        served = {"tracking", "memory", "launch", "system_metrics", "sweep_scale"}
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
                out = {w: cpu_ddp.measure(w, ROUNDS[0], 3, tmp, variants, log=log, max_reps=ROUNDS[1],
                                          budget_s=BUDGET_S) for w in ("tiny", "wide")}
                for w, (h, b) in cpu_ddp.WORKLOADS.items():  # per-hook ms per step on rank 0 (SimpleProfiler)
                    prof = cpu_ddp.profile(h, b, 3, "hooks", [])
                    out[w]["profile_hooks_ms_per_step"] = dict(list(prof["hooks_ms_per_step"].items())[:25])
                    out[w]["profile_step_ms"] = 1e3 * prof["step_s"]
                return out

            cpu_out = section("cpu_ddp", cpu)
            if cpu_out:
                if "wide" in cpu_out:
                    w = cpu_out["wide"]
                    ratios["cpu_ddp_ratio"] = _entry("cpu_ddp_ratio", w["ratio"], step_ms=w["step_ms"],
                                                     spread=_spread(w, "ratio"),
                                                     raw_vs_anchor_raw=w.get("raw_vs_anchor_raw"),
                                                     raw_vs_anchor_raw_spread=_spread(w, "raw_vs_anchor_raw"))
                else:
                    ratios["cpu_ddp_ratio"] = _skipped("cpu_ddp_ratio", "quick: tiny workload only")
                t = cpu_out["tiny"]
                ratios["cpu_ddp_added_ms"] = _entry("cpu_ddp_added_ms", t["added_ms"], step_ms=t["step_ms"],
                                                    ratio=t["ratio"], spread=_spread(t, "added_ms"),
                                                    raw_vs_anchor_raw=t.get("raw_vs_anchor_raw"),
                                                    raw_vs_anchor_raw_spread=_spread(t, "raw_vs_anchor_raw"))

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
                out = {w: tracking.measure(uri, w, ROUNDS[0], 6 if w == "wide" else 3, log=log, max_reps=ROUNDS[1])
                       for w in ("wide", "tiny")}
                out["delivery"] = tracking.delivery_cost(uri)
                return out

            tr = section("tracking", track)
            if tr:
                if "wide" in tr:
                    ratios["tracking_ratio"] = _entry("tracking_ratio", tr["wide"]["ratio"],
                                                      step_ms=tr["wide"]["step_ms"],
                                                      spread=_spread(tr["wide"], "ratio"))
                else:
                    ratios["tracking_ratio"] = _skipped("tracking_ratio", "quick: tiny workload only")
                ratios["tracking_ratio_tiny"] = _entry("tracking_ratio_tiny", tr["tiny"]["ratio"],
                                                       step_ms=tr["tiny"]["step_ms"], delivery=tr.get("delivery"),
                                                       spread=_spread(tr["tiny"], "ratio"))

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

            # ---- sweeps at scale (SLURM): submit of 1000 trials as one array, status over 1000 child runs
            sw = section("sweep_scale", lambda: {"skipped": True, "reason": "quick"} if quick
                         else sweep_scale.measure(uri, 1000, 1000, 5, log=log))
            if sw:
                for key, field in (("sweep_submit_1000_s", "submit_s"), ("sweep_status_1000_s", "status_s")):
                    ratios[key] = _skipped(key, sw["reason"]) if sw.get("skipped") else _entry(
                        key, sw[field], status_s_no_others=sw.get("status_s_no_others"),
                        model_import_floor_s=sw.get("model_import_floor_s"))

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
                         else system_metrics.measure(uri, "wide", ROUNDS[0], 12, 1.0, log=log, max_reps=ROUNDS[1]))
            if sm:
                ratios["system_metrics_ratio"] = _entry(
                    "system_metrics_ratio", sm["ratio_at_default_interval"], mean_step_ms=sm["mean_step_ms"],
                    ci95=sm["ci95_at_default_interval"], measured_every_s=sm["interval_s"],
                    measured_ratio=sm["ratio"], measured_spread=_spread(sm, "ratio"),
                    sample_cpu_ms=sm["sample_cpu_ms"], core_share_at_default_interval=sm[
                        "core_share_at_default_interval"])

            # ---- the tracking server's ceiling, on servers of its own (quick: 2 jobs in one client process, to
            # this run's own sqlite server)
            tl = section("tracking_load", lambda: tracking_load.run(
                [2], 3.0, 20, 5, ["sqlite"], 4, log=log, sqlite_at=tmp / "mlflow", uri_at=uri, max_procs=1)
                if quick else tracking_load.run([1, 4, 16, 64], 8.0, 20, 5, ["sqlite", "postgres"], 4, log=log))
            for server in ("sqlite", "postgres") if tl else ():
                key = f"tracking_load_points_per_s_{server}"
                ratios[key] = _skipped(key, "quick") if server not in tl else _entry(
                    key, tl[server]["max_points_per_s"], knee_jobs=tl[server]["knee_jobs"], lost=tl[server]["lost"],
                    p99_batch_ms=max(r["p99_batch_ms"] for r in tl[server]["rows"]))

            # ---- fully sharded training against DDP (quick: skipped, a minute and more of 4 ranks)
            fs = section("fsdp_memory", lambda: {"skipped": True, "reason": "quick"} if quick
                         else fsdp_memory.measure(log=log))
            for key, field in zip(fsdp_memory.GOALS, ("state_ratio_2", "state_ratio_4", "step_ratio",
                                                      "blocking_ratio")) if fs else ():
                ratios[key] = _skipped(key, fs["reason"]) if fs.get("skipped") else _entry(key, fs[field])
    results["ratios"] = ratios
    results["errors"] = errors
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def quick_runs(uri: str, log: Any) -> dict[str, Any]:
    """--quick: one raw run and two runs of trainctl's worker path (MLflow every step / no logger), shared by the
    CPU-DDP, tracking and memory sections."""
    from bench.procs import run_json
    from bench.worker_path import worker

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
        for key in ("cpu_ddp", "tracking", "checkpointing", "launch", "cli", "sweep_scale", "memory", "system_metrics",
                    "tracking_load", "fsdp_memory", "seconds"):
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
