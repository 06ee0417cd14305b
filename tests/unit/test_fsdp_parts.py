"""fsdp's pure parts: the spec's refused combinations, and the commit and verification of a sharded checkpoint
directory on real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainctl.callbacks.checkpoint_io import manifest_path, verify
from trainctl.callbacks.sharded_checkpoint import commit, file_digest, own_files, remove, save_meta, tmp_dir
from trainctl.spec import Sharding, Strategy, parse_spec, read_yaml

from .spec_helpers import ROOT, mutate, only_problem


def test_ddp_is_the_default_and_fsdp_parses(raw: dict[str, Any]) -> None:
    assert parse_spec(raw).resources.strategy is Strategy.ddp
    spec = parse_spec(mutate(mutate(raw, "resources.strategy", "fsdp"), "fsdp",
                             {"sharding": "shard_grad_op", "wrap": ["torch.nn.Linear"],
                              "activation_checkpointing": True}))
    assert spec.resources.strategy is Strategy.fsdp and spec.fsdp.sharding is Sharding.shard_grad_op
    assert spec.fsdp.wrap == ["torch.nn.Linear"]
    example = parse_spec(read_yaml(ROOT / "jobs" / "gpt-fsdp.yaml"))  # the GPU example, its classes imported
    assert example.resources.strategy is Strategy.fsdp and example.fsdp.wrap == ["trainctl.examples.gpt.Block"]


@pytest.mark.parametrize(("fsdp", "extra", "where", "words"), [
    ({"cpu_offload": True}, {}, "fsdp", "resources.strategy is ddp"),  # the block without the strategy
    ({"activation_checkpointing": True}, {"resources.strategy": "fsdp"}, "fsdp.activation_checkpointing", "wrap"),
    ({"cpu_offload": True}, {"resources.strategy": "fsdp"}, "fsdp.cpu_offload", "nothing to offload"),
    ({"sharding": "hybrid_shard"}, {"resources.strategy": "fsdp"}, "fsdp.sharding", "replicates across nodes"),
    ({"wrap": ["not a path"]}, {"resources.strategy": "fsdp"}, "fsdp.wrap[0]", "class path"),
    ({}, {"resources.strategy": "fsdp", "trainer.precision": "64-true"}, "trainer.precision", "FSDP"),
    ({}, {"resources.strategy": "fsdp", "backend.kind": "ray", "tracking.uri": "http://127.0.0.1:5000"},
     "resources.strategy", "ray"),
])
def test_refused_fsdp_combinations_are_named(raw: dict[str, Any], fsdp: dict[str, Any], extra: dict[str, Any],
                                             where: str, words: str) -> None:
    raw = mutate(raw, "fsdp", fsdp)
    for path, value in extra.items():
        raw = mutate(raw, path, value)
    problem = only_problem(raw, check_classes=False)
    assert problem.path == where and words in problem.message, problem.render()


def _written(path: Path, world: int) -> list[dict[str, dict[str, Any]]]:
    """A checkpoint written aside as `world` ranks would: their shard files, DCP's metadata and Lightning's meta."""
    aside = tmp_dir(path)
    aside.mkdir(parents=True)
    for rank in range(world):
        (aside / f"__{rank}_0.distcp").write_bytes(bytes([rank]) * 10_000)
    (aside / ".metadata").write_bytes(b"dcp metadata")
    save_meta({"global_step": 7, "epoch": 0}, aside)
    return [{f.name: file_digest(f) for f in own_files(aside, rank)} for rank in range(world)]


def test_a_committed_directory_verifies_and_any_bad_shard_does_not(tmp_path: Path) -> None:
    path = tmp_path / "step-000000007.ckpt"
    manifest = commit(path, _written(path, 2), {"global_step": 7, "epoch": 0})
    assert not tmp_dir(path).exists() and manifest["world_size"] == 2 and manifest["global_step"] == 7
    assert set(manifest["files"]) == {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"}
    assert verify(path) is None
    shard = path / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:4096])
    assert "truncated" in (verify(path) or "")
    shard.write_bytes(bytes([9]) * 10_000)  # the right size, other bytes
    assert "checksum" in (verify(path) or "")
    shard.unlink()
    assert "missing" in (verify(path) or "")


def test_an_uncommitted_directory_never_verifies_and_remove_takes_the_manifest_first(tmp_path: Path) -> None:
    path = tmp_path / "step-000000007.ckpt"
    _written(path, 1)
    tmp_dir(path).rename(path)  # every file there, but no manifest: the commit never finished
    assert "no manifest" in (verify(path) or "")
    (tmp_path / "again").mkdir()
    other = tmp_path / "again" / "step-000000007.ckpt"
    commit(other, _written(other, 1), {"global_step": 7})
    remove(other)
    assert not other.exists() and not manifest_path(other).exists()


def test_a_sharded_checkpoint_seeds_a_new_run_whole(tmp_path: Path) -> None:
    """`trainctl resume RUN --from PATH` with a sharded directory: copied in with its manifest, named by its step."""
    from trainctl.resume import _seed_checkpoint

    path = tmp_path / "old" / "step-000000007.ckpt"
    path.parent.mkdir()
    commit(path, _written(path, 2), {"global_step": 7})
    _seed_checkpoint(path, tmp_path / "new")
    seeded = tmp_path / "new" / "checkpoints" / "resume" / "step-000000007.ckpt"
    assert seeded.is_dir() and verify(seeded) is None
