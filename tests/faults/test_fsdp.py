"""Fully sharded training on real ranks, in three jobs. One uninterrupted 2-rank fsdp run is the reference: it hands
off one loadable file through MLflow, and a run preempted twice and then losing a rank must end with its state, bit
for bit. gpt-smoke checkpoints from 2 ranks resume on 1 and, past a truncated shard, on 4."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import attempt_records, callbacks, client, run_cli, run_dir, run_info, steps, submit

from trainctl.callbacks.checkpoint_io import verify
from trainctl.callbacks.preemption import MAX_AGREE_STEPS

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

FSDP = ["resources.strategy=fsdp"]
# 2 epochs x 20 steps of digits: loader workers, shuffling, dropout, a StepLR and top-k in play; resume
# checkpoints at the epoch ends and at stops.
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
    """The uninterrupted run: its id, run directory and final state (the one every run below must reach)."""
    res, run_id = submit(tmp_path_factory.mktemp("fsdp-reference"), mlflow_server, BASE)
    assert res.returncode == 0 and run_id, res.stdout[-3000:]
    rdir = run_dir(mlflow_server, run_id)
    return {"run_id": run_id, "rdir": rdir, "state": full_state(newest(rdir))}


def test_fsdp_run_keeps_whole_sharded_checkpoints_and_hands_off_one_loadable_file(
        mlflow_server: str, reference: dict[str, Any], tmp_path: Path) -> None:
    """checkpoints/best, downloaded from the MLflow server, is one ordinary file that load_from_checkpoint reads on
    this one CPU process, and holds exactly the model of the best sharded checkpoint."""
    from trainctl.examples.digits import DigitsClassifier

    rdir = reference["rdir"]
    assert run_info(mlflow_server, reference["run_id"]).data.tags["trainctl.state"] == "FINISHED"
    kept = sorted(p.name for p in (rdir / "checkpoints" / "resume").glob("step-*.ckpt"))
    assert kept == ["step-000000020.ckpt", "step-000000040.ckpt"], kept  # whole checkpoints, both epoch ends
    manifest = json.loads(Path(f"{newest(rdir)}.manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["complete"]
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= manifest["files"].keys()
    got = Path(client(mlflow_server).download_artifacts(reference["run_id"], "checkpoints/best", str(tmp_path)))
    hand_off = got / "best.ckpt"
    assert hand_off.is_file() and verify(hand_off) is None
    source = json.loads(Path(f"{hand_off}.manifest.json").read_text())["source"]
    best = rdir / "checkpoints" / "best" / source
    assert best.is_dir(), best  # consolidated from the shards of the best checkpoint, at the run's end
    model = DigitsClassifier.load_from_checkpoint(hand_off, map_location="cpu")
    assert_same(dict(model.state_dict()), full_state(best)["model"], "hand-off")


def test_fsdp_preempted_twice_then_a_killed_rank_resumes_bit_exactly(mlflow_server: str, reference: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """One job: a time-limit warning on rank 0 mid-epoch (step 7), a preemption of rank 1 at the first epoch's end
    (19), then rank 1 killed mid second epoch (26), requeued each time; it ends with the reference state."""
    faults = [("SignalAtStep", {"step": 7, "rank": 0, "signal_name": "SIGUSR2"}),
              ("SignalAtStep", {"step": 19, "rank": 1, "signal_name": "SIGTERM"}),
              ("SignalAtStep", {"step": 26, "rank": 1, "signal_name": "SIGKILL"})]
    res, run_id = submit(tmp_path, mlflow_server, [*BASE, "fault_tolerance.max_restarts=3",
                                                   "fault_tolerance.collective_timeout_s=30", callbacks(*faults)])
    assert res.returncode == 0, res.stdout[-3000:]
    rdir = run_dir(mlflow_server, run_id)
    records = attempt_records(rdir)
    assert [r["outcome"] for r in records[:3]] == ["requeue"] * 3, records
    for point, record in zip((7, 19), records):
        assert point <= record["step"] <= point + MAX_AGREE_STEPS + 2, (point, record)
    assert "rank 1" in records[2]["reason"] and "died" in records[2]["reason"], records[2]["reason"]
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.attempt"] == "4"
    assert_same_training_state(reference["state"], full_state(newest(rdir)))
    assert_history_once(mlflow_server, run_id)


GPT_STEPS = 16


def _loss(uri: str, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in client(uri).get_metric_history(run_id, "train/loss")}


def _continuous(before: dict[int, float], after: dict[int, float], resumed: int) -> None:
    """The loss at the resume step keeps more than half of what training had gained by then (a fresh start would
    be back at the untrained loss): the weights and optimizer state came back."""
    first, last, now = before[min(before)], before[resumed - 1], after[resumed]
    assert first - last > 0.2, (first, last)  # something was learned before the stop
    assert now < first - 0.5 * (first - last), (first, last, now)


def test_fsdp_2_rank_checkpoints_resume_on_1_and_past_a_truncated_shard_on_4(mlflow_server: str,
                                                                              tmp_path: Path) -> None:
    """gpt-smoke on 2 ranks is stopped; its newest sharded checkpoint resumes, as a new run (`--from PATH`), on 1
    rank. Then a shard of it is truncated, and `trainctl resume RUN --set resources.devices_per_node=4` (what a
    user does when the ranks change) takes the 2-rank checkpoint before it, on 4 ranks. DCP reshards the state;
    the runs tag the changed data order."""
    from trainctl.examples.gpt import GPT

    res, run_id = submit(tmp_path, mlflow_server, [*FSDP, f"trainer.max_steps={GPT_STEPS}",
                                                   "checkpoint.every_n_train_steps=4", "tracking.system_metrics=0",
                                                   "fault_tolerance.max_restarts=0",
                                                   callbacks(("SignalAtStep", {"step": 8}))], job="jobs/gpt-smoke.yaml")
    assert res.returncode == 1, "max_restarts=0: the preempted job ends FAILED"
    rdir = run_dir(mlflow_server, run_id)
    stopped = attempt_records(rdir)[0]["step"]
    saved = newest(rdir)
    assert saved.name == f"step-{stopped:09d}.ckpt" and json.loads(Path(f"{saved}.manifest.json").read_text())[
        "world_size"] == 2
    before = _loss(mlflow_server, run_id)

    res = run_cli("resume", run_id, "--tracking-uri", mlflow_server, "--from", str(saved),
                  "--set", "resources.devices_per_node=1", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    one = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout).group(1)  # type: ignore[union-attr]
    tags = run_info(mlflow_server, one).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.world_size"] == "1"
    assert f"{saved.name}: saved on 2 ranks, resumed on 1" in tags["trainctl.resharded"]
    loss = _loss(mlflow_server, one)
    assert sorted(loss) == list(range(stopped, GPT_STEPS)), sorted(loss)
    _continuous(before, loss, stopped)

    # rank 1's shard of the newest checkpoint cut short: that whole checkpoint is unusable, the one before is taken
    previous = sorted((rdir / "checkpoints" / "resume").glob("step-*.ckpt"))[-2]
    shard = saved / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:4096])
    assert "truncated" in (verify(saved) or "") and verify(previous) is None
    res = run_cli("resume", run_id, "--tracking-uri", mlflow_server, "--set", "resources.devices_per_node=4",
                  timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.world_size"] == "4"
    assert saved.name in tags["trainctl.skipped_checkpoints"]
    assert f"{previous.name}: saved on 2 ranks, resumed on 4" in tags["trainctl.resharded"]
    logs = "".join(p.read_text(errors="replace") for p in (rdir / "logs").glob("*_0_log.out"))
    resumed = int(previous.name[5:14])
    assert f"resumed at step {resumed}" in logs, "the previous checkpoint is used"
    history = steps(mlflow_server, run_id)
    assert history == list(range(0, GPT_STEPS)), history  # every step once, on 2 ranks then 4
    _continuous(before, _loss(mlflow_server, run_id), resumed)
    last = newest(rdir)
    assert json.loads(Path(f"{last}.manifest.json").read_text())["world_size"] == 4
    # checkpoints/last is one file consolidated from the 4 shards: what a user loads on one CPU process
    model = GPT.load_from_checkpoint(rdir / "checkpoints" / "mirror" / "last.ckpt", map_location="cpu")
    assert_same(dict(model.state_dict()), full_state(last)["model"], "hand-off")
