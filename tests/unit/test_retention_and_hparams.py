"""Pure logic: which resume checkpoints go, how a module's hyperparameters become MLflow params, the `epoch` points."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from trainctl import hparams
from trainctl.callbacks.checkpoint_io import AtomicCheckpointIOImpl, manifest_path, stage_as, verify
from trainctl.callbacks.resume_checkpoint import beyond_keep, candidates
from trainctl.callbacks.tracking_logger import NoOpExperiment, TrackingLoggerImpl


def _steps(*steps: int) -> list[Path]:
    return [Path(f"step-{s:09d}.ckpt") for s in steps]


def test_keep_counts_the_checkpoint_just_written() -> None:
    assert beyond_keep(_steps(60, 40, 20), 2, _steps(60)[0]) == _steps(20)
    assert beyond_keep(_steps(60, 40, 20), 1, _steps(60)[0]) == _steps(40, 20)
    assert beyond_keep(_steps(40, 20), 2, _steps(40)[0]) == []


def test_the_checkpoint_just_written_is_never_removed() -> None:
    # a resume from step 20 past a newer file (skipped as corrupt) writes step 30: it stays, whatever its rank
    assert beyond_keep(_steps(60, 30, 20), 1, _steps(30)[0]) == _steps(20)
    assert beyond_keep(_steps(60, 30), 0, _steps(30)[0]) == []


def test_async_writes_leave_exactly_keep_checkpoints(tmp_path: Path) -> None:
    """Pruning waits for the write it follows: the files on disk after each save are the `keep` newest."""
    io = AtomicCheckpointIOImpl(async_save=True)
    run_dir = tmp_path / "run"
    for step in (10, 20, 30, 40):
        path = run_dir / "checkpoints" / "resume" / f"step-{step:09d}.ckpt"
        io.save_checkpoint({"global_step": step}, path)

        def prune(written: Path = path) -> None:
            for old in beyond_keep(candidates(run_dir), 2, written):
                io.remove_checkpoint(old)

        io.after_write(path, prune)
    io.teardown()
    assert [p.name for p in candidates(run_dir)] == ["step-000000040.ckpt", "step-000000030.ckpt"]
    assert not list((run_dir / "checkpoints" / "resume").glob("step-000000010*"))


def test_staged_checkpoint_keeps_a_fixed_name_and_verifies(tmp_path: Path) -> None:
    io = AtomicCheckpointIOImpl(async_save=False)
    for step in (5, 9):
        src = tmp_path / f"step-{step:09d}.ckpt"
        io.save_checkpoint({"global_step": step}, src)
        ckpt, manifest = stage_as(src, tmp_path / "mirror" / "last.ckpt")
    assert ckpt.name == "last.ckpt" and manifest == manifest_path(ckpt) and verify(ckpt) is None
    assert '"global_step": 9' in manifest.read_text()
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == ["last.ckpt", "last.ckpt.manifest.json"]


def test_hyperparameters_are_prefixed_flat_strings_with_valid_keys() -> None:
    got = hparams.as_params({"lr": 0.1, "opt": {"betas": [0.9, 0.99]}, "bad key!": None, "long": "x" * 7000})
    assert got["hparams/lr"] == "0.1" and got["hparams/opt.betas"] == "[0.9, 0.99]"
    assert got["hparams/bad key_"] == "None" and len(got["hparams/long"]) == hparams.MAX_VALUE
    assert hparams.as_params(Namespace(a=1)) == {"hparams/a": "1"}


def test_only_new_keys_are_logged_and_changed_ones_named() -> None:
    existing = {"hparams/lr": "0.1", "model.init_args.lr": "0.1"}
    new, changed = hparams.split(existing, {"hparams/lr": "0.2", "hparams/hidden": "64"})
    assert new == {"hparams/hidden": "64"} and changed == {"hparams/lr": "0.2"}
    assert hparams.split(existing, {"hparams/lr": "0.1"}) == ({}, {})


class _Sink:
    def __init__(self) -> None:
        self.points: list[tuple[dict[str, float], int]] = []

    def add(self, metrics: dict[str, float], step: int) -> None:
        self.points.append((metrics, step))


def test_epoch_is_logged_once_per_step() -> None:
    sink = _Sink()
    logger = TrackingLoggerImpl("0" * 32, "/tmp", sink, "http://127.0.0.1:1")  # type: ignore[arg-type]
    logger.log_metrics({"train/loss": 1.0, "epoch": 0}, step=19)
    logger.log_metrics({"val/loss": 2.0, "epoch": 0}, step=19)  # validation at the same step
    logger.log_metrics({"train/loss": 0.5, "epoch": 1}, step=20)
    assert [(sorted(m), s) for m, s in sink.points] == [(["epoch", "train/loss"], 19), (["val/loss"], 19),
                                                        (["epoch", "train/loss"], 20)]


def test_other_ranks_get_a_no_op_experiment() -> None:
    logger = TrackingLoggerImpl("0" * 32, "/tmp", None, "http://127.0.0.1:1")
    assert isinstance(logger.experiment, NoOpExperiment)
    assert logger.experiment.log_text(logger.run_id, "x", "a.txt") is None
    assert logger.experiment[0].log_figure() is None
