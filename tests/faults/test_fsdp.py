"""Fully sharded training on real ranks: a 2-rank fsdp job finishes and hands off one loadable file, a preempted
fsdp job resumes bit-exactly from its sharded checkpoint, and a truncated shard makes the previous one be used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import callbacks, run_cli, run_dir, run_info, steps, submit

from trainctl.callbacks.checkpoint_io import verify
from trainctl.callbacks.preemption import MAX_AGREE_STEPS

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

FSDP = ["resources.strategy=fsdp"]
# 2 epochs x 20 steps of digits: loader workers, shuffling, dropout, a StepLR and top-k in play.
BASE = [*FSDP, "trainer.max_epochs=2", "early_stopping=null", "checkpoint.every_n_train_steps=null",
        "data.init_args.num_workers=2"]
LAST_STEP = 40


def full_state(ckpt: Path) -> dict[str, Any]:
    """Everything a sharded checkpoint holds (model, optimizer, loops, callbacks), read from its shards in one
    process: what the comparisons below see is the whole state, not one rank's part."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    assert ckpt.is_dir() and verify(ckpt) is None, (ckpt, verify(ckpt))
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(ckpt), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    state["meta"] = torch.load(ckpt / "meta.pt", map_location="cpu", weights_only=False)
    return state


def newest(rdir: Path) -> Path:
    return sorted((rdir / "checkpoints" / "resume").glob("step-*.ckpt"))[-1]


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of two nested states (tensors with torch.equal)."""
    import torch

    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), f"differs: {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ: {where}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"lengths differ: {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"differs: {where}: {a!r} != {b!r}"


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["meta"]["global_step"] == b["meta"]["global_step"] == LAST_STEP
    assert_same(a["model"], b["model"], "model")
    assert_same(a["optimizer_0"], b["optimizer_0"], "optimizer_0")
    assert_same(a["meta"]["lr_schedulers"], b["meta"]["lr_schedulers"], "lr_schedulers")


def assert_history_once(uri: str, run_id: str) -> None:
    history = steps(uri, run_id)
    assert history == list(range(history[0], LAST_STEP)), f"every step exactly once: {history}"


@pytest.fixture(scope="module")
def reference(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    res, run_id = submit(tmp_path_factory.mktemp("fsdp-reference"), mlflow_server, BASE)
    assert res.returncode == 0 and run_id, res.stdout[-3000:]
    return full_state(newest(run_dir(mlflow_server, run_id)))


def test_fsdp_gpt_smoke_finishes_with_sharded_checkpoints_and_a_loadable_hand_off(mlflow_server: str,
                                                                                   tmp_path: Path) -> None:
    res, run_id = submit(tmp_path, mlflow_server, [*FSDP, "trainer.max_steps=12", "checkpoint.every_n_train_steps=4",
                                                   "tracking.system_metrics=0"], job="jobs/gpt-smoke.yaml")
    assert res.returncode == 0 and run_id, res.stdout[-3000:]
    assert run_info(mlflow_server, run_id).data.tags["trainctl.state"] == "FINISHED"
    rdir = run_dir(mlflow_server, run_id)
    kept = sorted(p.name for p in (rdir / "checkpoints" / "resume").glob("step-*.ckpt"))
    assert kept == ["step-000000008.ckpt", "step-000000012.ckpt"], kept  # keep_resume: 2, whole checkpoints
    manifest = json.loads(Path(f"{newest(rdir)}.manifest.json").read_text())
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= manifest["files"].keys()
    # checkpoints/last is one consolidated file: what a user loads on one CPU process
    from trainctl.examples.gpt import GPT

    last = rdir / "checkpoints" / "mirror" / "last.ckpt"
    model = GPT.load_from_checkpoint(last, map_location="cpu")
    assert_same(dict(model.state_dict()), full_state(newest(rdir))["model"], "hand-off")


@pytest.mark.parametrize("step", [7, 19, 26])  # mid-epoch, the first epoch's end, mid second epoch
def test_fsdp_preemption_resumes_bit_exactly(mlflow_server: str, reference: dict[str, Any], tmp_path: Path,
                                             step: int) -> None:
    sig, rank = ("SIGUSR2", 0) if step % 2 else ("SIGTERM", 1)
    res, run_id = submit(tmp_path, mlflow_server,
                         [*BASE, callbacks(("SignalAtStep", {"step": step, "rank": rank, "signal_name": sig}))])
    assert res.returncode == 0, res.stdout[-3000:]
    rdir = run_dir(mlflow_server, run_id)
    first = json.loads((rdir / "attempts" / "0001.json").read_text())
    assert first["outcome"] == "requeue" and step <= first["step"] <= step + MAX_AGREE_STEPS + 2, first
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.attempt"] == "2"
    assert_same_training_state(reference, full_state(newest(rdir)))
    assert_history_once(mlflow_server, run_id)


def test_fsdp_truncated_shard_makes_the_previous_checkpoint_used(mlflow_server: str, reference: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    res, run_id = submit(tmp_path, mlflow_server, [*BASE, "checkpoint.every_n_train_steps=10",
                                                   "fault_tolerance.max_restarts=0",
                                                   callbacks(("SignalAtStep", {"step": 24}))])
    assert res.returncode == 1, "max_restarts=0: the preempted job ends FAILED"
    rdir = run_dir(mlflow_server, run_id)
    stopped = json.loads((rdir / "attempts" / "0001.json").read_text())["step"]
    ckpt = newest(rdir)
    assert ckpt.name == f"step-{stopped:09d}.ckpt" and ckpt.is_dir()
    shard = ckpt / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:4096])  # rank 1's shard half-written
    assert "truncated" in (verify(ckpt) or "")
    res = run_cli("resume", run_id, "--tracking-uri", mlflow_server, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    tags = run_info(mlflow_server, run_id).data.tags
    assert ckpt.name in tags["trainctl.skipped_checkpoints"] and tags["trainctl.state"] == "FINISHED"
    logs = "".join(p.read_text(errors="replace") for p in (rdir / "logs").glob("*_0_log.out"))
    assert "attempt 2 · cause" in logs and "resumed at step 20" in logs, "the previous checkpoint is used"
    assert_same_training_state(reference, full_state(newest(rdir)))
    assert_history_once(mlflow_server, run_id)


def test_fsdp_checkpoint_from_2_ranks_resumes_on_1(mlflow_server: str, tmp_path: Path) -> None:
    """DCP reshards on load: the job goes on with its loss continuous, and the run tags the changed data order."""
    res, run_id = submit(tmp_path, mlflow_server, [*FSDP, "trainer.max_steps=16", "checkpoint.every_n_train_steps=4",
                                                   "tracking.system_metrics=0", "fault_tolerance.max_restarts=0",
                                                   callbacks(("SignalAtStep", {"step": 6}))], job="jobs/gpt-smoke.yaml")
    assert res.returncode == 1, "max_restarts=0: the preempted job ends FAILED"
    rdir = run_dir(mlflow_server, run_id)
    stopped = json.loads((rdir / "attempts" / "0001.json").read_text())["step"]
    assert json.loads(Path(f"{newest(rdir)}.manifest.json").read_text())["world_size"] == 2
    res = run_cli("resume", run_id, "--tracking-uri", mlflow_server, "--set", "resources.devices_per_node=1",
                  timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED"
    assert f"step-{stopped:09d}.ckpt: saved on 2 ranks, resumed on 1" in tags["trainctl.resharded"]
    from helpers import client

    loss = {m.step: m.value for m in client(mlflow_server).get_metric_history(run_id, "train/loss")}
    assert sorted(loss) == list(range(min(loss), 16)), sorted(loss)  # every step once, on 2 ranks then 1
    before, after = loss[stopped - 1], loss[stopped]
    assert abs(after - before) < 0.25 * before, (stopped, before, after)  # the weights came back, not a fresh start
    assert loss[15] < loss[0]
