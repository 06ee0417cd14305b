"""What trainctl writes for MLflow's UI: the experiment's kind, the run's description, links to the training view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from trainctl import tracking
from trainctl.spec import parse_spec


def test_experiments_are_marked_model_training_unless_a_kind_was_chosen(raw: dict[str, Any], tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = MlflowClient(tracking_uri=uri)
    old = cl.create_experiment("made-before-trainctl-tagged")
    chosen = cl.create_experiment("genai-by-choice", tags={tracking.KIND_TAG: "genai_development"})
    for name, exp_id in [("new", None), ("made-before-trainctl-tagged", old), ("genai-by-choice", chosen)]:
        spec = parse_spec({**raw, "experiment": name}, "jobs/digits.yaml")
        run_id = tracking.create_run(spec, uri, "local")
        run = cl.get_run(run_id)
        assert exp_id in (None, run.info.experiment_id)
        kind = cl.get_experiment(run.info.experiment_id).tags[tracking.KIND_TAG]
        assert kind == ("genai_development" if name == "genai-by-choice" else tracking.KIND_TRAINING)
        note = run.data.tags["mlflow.note.content"]
        assert "**digits** trains `trainctl.examples.digits.DigitsClassifier`" in note, note
        assert "`trainctl.examples.digits.DigitsDataModule`" in note and "local backend" in note, note
        assert tracking.run_page(uri, run_id) == tracking.ui_link("http://127.0.0.1:5000", run.info.experiment_id,
                                                                  run_id)  # where `make mlflow` serves the store


def test_ui_links_open_the_training_view() -> None:
    assert (tracking.ui_link("http://127.0.0.1:5000/", "3", "ab" * 16)
            == f"http://127.0.0.1:5000/#/experiments/3/runs/{'ab' * 16}?workflowType=machine_learning")
    assert tracking.ui_link("http://h:1", "3") == "http://h:1/#/experiments/3?workflowType=machine_learning"
