"""A run handed on: its best checkpoint to the Model Registry, its code and packages recorded so that `trainctl
reproduce` re-creates it bit for bit, and `trainctl gc` freeing its disk without touching what a live or resumable run
needs. One short digits run serves all three (in this order: gc removes its files last)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from helpers import (
    SHORT,
    assert_same_training_state,
    final_checkpoint,
    run_cli,
    run_dir,
    run_info,
    submit,
    wait_state,
    wait_steps,
)
from mlflow import MlflowClient

pytestmark = pytest.mark.mlflow
MODEL = f"digits-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def finished(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    workdir = tmp_path_factory.mktemp("handoff")
    res, run_id = submit(workdir, mlflow_server, [*SHORT, f"tracking.register={{name: {MODEL}, alias: champion}}"])
    assert res.returncode == 0 and run_id, res.stdout[-3000:] + res.stderr[-3000:]
    return run_id, workdir


def test_best_checkpoint_becomes_a_registered_version_that_reproduces_the_test_metric(
        mlflow_server: str, finished: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import pytorch_lightning as pl

    from trainctl.examples.digits import DigitsClassifier, DigitsDataModule

    run_id, _ = finished
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = run_info(mlflow_server, run_id)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == run_id and version.source == f"runs:/{run_id}/checkpoints/best"
    assert run.data.tags["trainctl.registered"] == f"{MODEL}/{version.version}"
    best_acc = max(m.value for m in client.get_metric_history(run_id, "val/acc"))
    assert version.tags["trainctl.monitor"] == "val/acc" and version.tags["trainctl.attempt"] == "1"
    assert float(version.tags["trainctl.monitor_value"]) == pytest.approx(best_acc, abs=1e-6)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_server)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion"))
    model = DigitsClassifier.load_from_checkpoint(local / "best.ckpt", map_location="cpu", weights_only=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    (result,) = trainer.test(model, datamodule=DigitsDataModule(batch_size=32), verbose=False)
    assert result["test/acc"] == pytest.approx(run.data.metrics["test/acc"], abs=1e-7), "one CPU process, same metric"

    by_hand = run_cli("register", run_id, f"{MODEL}-hand", "--tracking-uri", mlflow_server)
    assert by_hand.returncode == 0 and f"{MODEL}-hand version 1" in by_hand.stdout, by_hand.stderr
    hand = client.get_model_version(f"{MODEL}-hand", "1")
    assert float(hand.tags["trainctl.monitor_value"]) == pytest.approx(best_acc, abs=1e-6)
    missing = run_cli("register", "0" * 32, "x", "--tracking-uri", mlflow_server)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_reproduce_rebuilds_code_and_weights_bit_for_bit(mlflow_server: str, finished: tuple[str, Path]) -> None:
    run_id, _ = finished
    tags = run_info(mlflow_server, run_id).data.tags
    assert tags["trainctl.python"] and tags["trainctl.torch"] and tags["trainctl.cuda"]
    assert tags["mlflow.source.git.commit"] and tags["trainctl.git.dirty"] in ("true", "false")
    client = MlflowClient(tracking_uri=mlflow_server)
    recorded = {a.path for a in client.list_artifacts(run_id, "environment")}
    assert "environment/requirements.txt" in recorded
    assert ("environment/git-diff.patch" in recorded) == (tags["trainctl.git.dirty"] == "true")

    res = run_cli("reproduce", run_id, "--tracking-uri", mlflow_server, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"at commit {tags['mlflow.source.git.commit'][:12]}" in res.stdout
    new_id = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout)[1]
    new = run_info(mlflow_server, new_id)
    assert new.data.tags["trainctl.reproduces"] == run_id and new.data.tags["trainctl.state"] == "FINISHED"
    assert "/reproduce/" in new.data.tags["mlflow.source.name"], "submitted from the checkout"
    assert_same_training_state(final_checkpoint(run_dir(mlflow_server, run_id)),
                               final_checkpoint(run_dir(mlflow_server, new_id)))


def test_gc_removes_only_what_no_live_or_resumable_run_needs(mlflow_server: str, finished: tuple[str, Path]) -> None:
    from trainctl.callbacks.checkpoint_io import verify
    from trainctl.callbacks.resume_checkpoint import latest_good

    run_id, workdir = finished
    done = run_dir(mlflow_server, run_id)
    _, live_id = submit(workdir, mlflow_server, ["trainer.max_epochs=200", "early_stopping=null"], "--detach")
    wait_steps(mlflow_server, live_id, 3)
    live = run_dir(mlflow_server, live_id)
    gc = ["gc", "--workdir", str(workdir), "--older-than", "0"]

    def ended_files() -> list[Path]:  # the live run writes on
        return sorted(p for p in workdir.rglob("*") if p.is_file() and live not in p.parents)

    files_before = ended_files()

    dry = run_cli(*gc)
    assert dry.returncode == 0, dry.stderr
    assert f"remove  {done.name}" in dry.stdout and f"keep    {live.name}  (RUNNING: live)" in dry.stdout
    assert "nothing removed" in dry.stdout
    assert ended_files() == files_before, "a dry run removes nothing"
    assert f"keep    {done.name}" in run_cli("gc", "--workdir", str(workdir), "--older-than", "1d").stdout

    trimmed = run_cli(*gc, "--keep-best", "--delete")
    assert trimmed.returncode == 0, trimmed.stderr
    left = {p.relative_to(done).parts[0] if p.parent == done else "/".join(p.relative_to(done).parts[:2])
            for p in done.rglob("*") if p.is_file()}
    assert left == {"job.json", "spec.yaml", "checkpoints/best"}, left
    assert any((done / "checkpoints" / "best").glob("*.ckpt"))
    assert (live / "job.json").is_file() and latest_good(live)[0] is not None, "the live run is untouched"

    cancel = run_cli("cancel", live_id, "--tracking-uri", mlflow_server, "--grace", "120")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    wait_state(mlflow_server, live_id, {"KILLED"})
    resumable, _ = latest_good(live)
    assert resumable is not None
    final = run_cli(*gc, "--delete")
    assert final.returncode == 0, final.stderr
    assert not done.exists(), "a FINISHED run's directory goes whole"
    assert f"resumable: keeps {resumable.name}" in final.stdout
    assert resumable.is_file() and verify(resumable) is None and (live / "job.json").is_file()
    assert not list((live / "logs").glob("*")), "what resume does not need is gone"
    bad = run_cli("gc", "--workdir", str(workdir), "--older-than", "soon")
    assert bad.returncode == 2 and "--older-than" in bad.stderr and "HINT" in bad.stderr
