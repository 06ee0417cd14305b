"""The GPT flagship on CPU: its job spec validates, and bench/gpu_flagship.py's smoke mode runs the raw loop and
trainctl's worker path on the same tiny model and batches and writes well-formed JSON (no timing assertions:
the GPU figures live in bench/GPU_NOTES.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli

BENCH = ROOT / "bench" / "gpu_flagship.py"


def test_gpt_smoke_spec_validates() -> None:
    res = run_cli("validate", "jobs/gpt-smoke.yaml", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_gpt_small_spec_validates() -> None:
    """A local GPU spec: valid where a GPU is visible; elsewhere refused for that one reason, with a HINT."""
    import torch

    res = run_cli("validate", "jobs/gpt-small.yaml", timeout=120)
    if torch.cuda.is_available():
        assert res.returncode == 0, res.stdout + res.stderr
        return
    assert res.returncode == 2 and "1 problem found" in res.stderr, res.stdout + res.stderr
    assert "resources.accelerator: gpu: this machine has no visible GPU" in res.stderr and "HINT" in res.stderr


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_flagship_smoke_writes_wellformed_json(tmp_path: Path) -> None:
    out = tmp_path / "flagship.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH), "--smoke", "--device", "cpu", "--steps", "3", "--warmup", "2",
                          "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=240,
                         cwd=ROOT, env=env)
    log = out.with_suffix(".log")
    detail = res.stdout[-3000:] + res.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    assert res.returncode == 0, detail
    report = json.loads(out.read_text())
    assert set(report) >= {"config", "summary", "runs", "errors"}
    assert not report["errors"], report["errors"]
    assert {r["variant"] for r in report["runs"]} == {"raw", "trainctl"}
    for run in report["runs"]:
        for key in ("tokens_per_s", "step_s_median", "wall_step_s", "fpt", "tokens_per_step"):
            assert _positive(run[key]), (run["variant"], key, run.get(key))
        assert run["timed_steps"] == 3
        assert math.isfinite(run["final_loss"])
    trainctl = next(r for r in report["runs"] if r["variant"] == "trainctl")
    assert trainctl["strategy"] == "SingleDeviceStrategy"  # the worker at world size 1: no DDP buckets
    for variant in ("raw", "trainctl"):
        s = report["summary"][variant]
        assert _positive(s["tokens_per_s"]) and _positive(s["ratio_vs_raw"]) and _positive(s["step_ms"])
    assert report["summary"]["raw"]["ratio_vs_raw"] == 1.0
    # same seed, same batches, same arithmetic on CPU: every path trains the same model the same way
    losses = [r["final_loss"] for r in report["runs"]]
    assert max(losses) - min(losses) < 1e-3, losses
