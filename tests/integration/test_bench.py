"""`python -m bench.run_all --quick` runs every benchmark and writes well-formed results (no timing asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

RATIO_KEYS = {
    "cpu_ddp_ratio", "cpu_ddp_added_ms", "tracking_ratio", "tracking_ratio_tiny", "checkpoint_blocking_ratio",
    "checkpoint_write_slowdown", "launch_local_first_step_s", "launch_local_end_noticed_s",
    "launch_slurm_first_step_s", "launch_slurm_end_noticed_s", "memory_peak_ratio", "memory_growth_mb_per_10k_steps",
    "system_metrics_ratio", "tracking_load_points_per_s_sqlite", "tracking_load_points_per_s_postgres",
    "cli_status_s", "cli_ls_s", "cli_logs_s", "cli_cancel_s", "cli_validate_s", "sweep_submit_1000_s",
    "sweep_status_1000_s", "fsdp_state_ratio_2", "fsdp_state_ratio_4", "fsdp_step_ratio",
    "fsdp_checkpoint_blocking_ratio",
}
MEASURED_IN_QUICK = {"cpu_ddp_added_ms", "tracking_ratio_tiny", "checkpoint_blocking_ratio",
                     "checkpoint_write_slowdown", "memory_peak_ratio", "memory_growth_mb_per_10k_steps",
                     "system_metrics_ratio", "tracking_load_points_per_s_sqlite"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    res = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return res, out


def test_quick_run_writes_json_markdown_and_chart(quick: tuple[subprocess.CompletedProcess, Path]) -> None:
    res, out = quick
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["errors"] == {}
    assert out.with_suffix(".md").read_text().startswith("# trainctl benchmarks")
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = data["machine"]
    for key in ("cpu", "cores", "python", "torch", "pytorch_lightning", "mlflow", "submitit", "git_commit"):
        assert key in m, key
    assert isinstance(m["cores"], int) and m["torch"]


def test_every_ratio_is_there_with_its_goal(quick: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, out = quick
    ratios = json.loads(out.read_text())["ratios"]
    assert set(ratios) == RATIO_KEYS
    for key, r in ratios.items():
        assert {"value", "goal", "unit", "met", "what"} <= set(r), key
        assert r["goal"] is None or isinstance(r["goal"], (int, float)), key
        if r.get("skipped"):
            assert r["value"] is None and r["met"] is None and r["reason"], key
            continue
        assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), (key, r["value"])
        assert r["met"] in (True, False, None), key
    for key in MEASURED_IN_QUICK:
        assert not ratios[key].get("skipped"), key
    assert ratios["tracking_load_points_per_s_sqlite"]["lost"] == 0, "every logged point reaches the server"


def test_sections_hold_their_raw_figures(quick: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, out = quick
    data = json.loads(out.read_text())
    tiny = data["cpu_ddp"]["tiny"]
    assert tiny["step_ms"]["raw"] > 0 and tiny["step_ms"]["trainctl"] > 0
    tr = data["tracking"]["tiny"]
    assert tr["step_ms"]["mlflow"] > 0 and tr["step_ms"]["no_logger"] > 0
    assert tr["points_per_run"]["train/loss"] > 0, "the metrics reached the MLflow server"
    delivery = data["tracking"]["delivery"]
    assert delivery["client_cpu_ms_per_1000_points_rest"] > 0 and delivery["server_cpu_us_per_point"] >= 0
    assert data["ratios"]["tracking_ratio_tiny"]["delivery"] == delivery
    ck = data["checkpointing"]
    assert ck["blocked_s"] and ck["sync_save_fsync_s"] and ck["state_gb"] > 0
    assert data["launch"]["slurm"]["skipped"] and data["launch"]["local"]["skipped"]
    assert data["memory"]["leak"]["samples"]
    sm = data["system_metrics"]
    assert sm["samples_per_run"][0] >= 1 and sm["system_points_per_run"][0] > 0, "the node's samples reached MLflow"
