"""The parent: each variant in its own process, within a time budget; the report rewritten after each."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.flagship.protocol import TIMED, child_cmd, parse_variant
from bench.flagship.report import summarize, table

ROOT = Path(__file__).resolve().parents[2]


def parent_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else out_path.with_suffix(".log")
    chosen = "auto"  # what `probe` means until probe_attention has run
    runs: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    warm: list[float] = []  # durations of runs after the first few (compiles mostly cached)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    needs_probe = args.attention == "probe" or any(parse_variant(v)[1] == "probe" for v in variants)
    if needs_probe and args.device == "cuda" and "probe_attention" not in variants:
        variants = ["probe_attention", *variants]
    from trainctl.spec import load_spec

    base = load_spec(args.spec, args.set or [], check_classes=False)
    base_attention = base.model.init_args.get("attention", "auto")
    if args.attention and args.attention != "probe":
        base_attention = args.attention
    base_batch = args.batch or int(base.data.init_args.get("batch_size", 16))
    meta: dict[str, Any] = {}

    def write_report() -> dict[str, Any]:
        """Rewritten after every variant: a run cut short by an outer timeout still leaves its figures."""
        summary = summarize(runs)
        report = {"config": {**meta, "steps": args.steps, "warmup": args.warmup, "spec": args.spec,
                             "overrides": args.set or [], "variants": variants, "attention_probe_choice": chosen},
                  "summary": summary, "runs": runs, "diagnostics": diagnostics, "errors": errors,
                  "total_s": time.monotonic() - started}
        out_path.write_text(json.dumps(report, indent=2, default=str))
        return summary

    with open(log_path, "a") as log:
        for i, spec in enumerate(variants):
            v, attention, batch = parse_variant(spec)
            attention = attention or args.attention
            if attention == "probe":
                attention = chosen
            # labels name the effective configuration: the same one run twice pools under one label
            label = v + (f"@{attention}" if attention and attention != base_attention else "") + \
                (f":b{batch}" if batch and batch != base_batch else "")
            left = args.budget_s - (time.monotonic() - started) if args.budget_s else None
            need = (statistics.median(warm) if warm else 45.0) + 10.0
            if left is not None and i >= args.must_run and left < need:
                errors.append({"variant": label, "skipped": f"time budget: {left:.0f} s left, ~{need:.0f} s needed"})
                print(f"[flagship] skip {label}: {left:.0f} s left of the budget", flush=True)
                continue
            fd, child_out = tempfile.mkstemp(suffix=".json")
            os.close(fd)
            cmd = child_cmd(args, v, child_out, attention, batch)
            print(f"[flagship] {label} ...", flush=True)
            log.write(f"\n===== {label}: {' '.join(cmd)}\n")
            log.flush()
            t0 = time.monotonic()
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                      timeout=None if left is None else max(left, 30.0))
                rc: Any = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            took = time.monotonic() - t0
            if i >= args.must_run and v != "probe_attention":
                warm.append(took)
            text = Path(child_out).read_text() if Path(child_out).exists() else ""
            Path(child_out).unlink(missing_ok=True)
            if rc != 0 or not text:
                errors.append({"variant": label, "rc": rc, "seconds": took})
                print(f"[flagship] {label} FAILED (rc {rc}, {took:.0f} s); see {log_path}", flush=True)
                write_report()
                continue
            res = json.loads(text)
            res["process_s"], res["label"] = took, label
            if v in TIMED:
                runs.append(res)
                meta = meta or {k: res.get(k) for k in ("device_name", "torch", "batch", "block_size", "compile",
                                                         "compile_mode", "attention", "precision")}
                print(f"[flagship] {label}: {res['tokens_per_s']:.0f} tokens/s, step {1e3 * res['step_s_median']:.2f}"
                      " ms" + (f", MFU {100 * res['mfu']:.1f}%" if res.get("mfu") else "")
                      + f" (first step {res['first_step_s']:.0f} s, process {took:.0f} s)", flush=True)
            else:
                diagnostics.setdefault(label, []).append(res)
                print(f"[flagship] {label}: done ({took:.0f} s)", flush=True)
                if v == "probe_attention":
                    chosen = res.get("choice", "auto")
                    print(f"[flagship] attention probe picks {chosen}: {json.dumps(res)}", flush=True)
            write_report()
    summary = write_report()
    print(table(summary, meta), flush=True)
    hooks = next((d for k, d in diagnostics.items() if k.startswith("trainctl_hooks")), None)
    if hooks:
        print("trainctl per-step host time by hook (ms):", json.dumps(hooks[0].get("hooks_ms_per_step"), indent=1))
        print("host syncs per step by site:", json.dumps(hooks[0].get("sync_sites"), indent=1))
    prof = next((d for k, d in diagnostics.items() if k.startswith("profile")), None)
    if prof:
        print("device time per step by family (ms):", json.dumps(prof[0].get("device_ms_per_step_by_family"), indent=1))
    print(f"[flagship] wrote {out_path}", flush=True)
    return 0 if runs and not any("rc" in e for e in errors) else 1
