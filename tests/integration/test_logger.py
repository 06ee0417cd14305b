"""`self.logger` is MLflow's logger on every rank, and the run's record is whole: a module written the way MLflow's
and Lightning's docs show (trainctl.testing.logged) on 2 ranks, against the real MLflow server."""

from __future__ import annotations

import getpass
import json
import subprocess
from pathlib import Path

import pytest
from helpers import JOB, ROOT, SHORT, run_info, steps, submit
from mlflow import MlflowClient

from trainctl import tracking
from trainctl.runstate import State

pytestmark = pytest.mark.mlflow


def test_a_module_written_for_mlflow_logs_from_every_rank(mlflow_server: str, tmp_path: Path) -> None:
    res, run_id = submit(tmp_path, mlflow_server, [*SHORT, "trainer.max_epochs=2",
                                                   "model.class_path=trainctl.testing.logged.LoggedDigits"])
    assert res.returncode == 0 and run_id, res.stdout[-3000:] + res.stderr[-3000:]
    run = run_info(mlflow_server, run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["trainctl.state"] == "FINISHED" and tags["trainctl.attempt"] == "1", tags.get("trainctl.reason")

    # a name of its own (the run directory's), the spec's name as a tag, MLflow's standard tags
    rdir = Path(tags["trainctl.run_dir"])
    assert run.info.run_name == tags["mlflow.runName"] == rdir.name == f"digits-{run_id[:8]}"
    assert tags["trainctl.name"] == "digits"
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.name"] == str(ROOT / JOB)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert tags["mlflow.source.git.commit"] == head.strip()

    # every rank's logger answered like MLFlowLogger: a client on rank 0, a no-op stand-in on rank 1
    probes = [json.loads((rdir / f"logger-probe-rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["experiment"] for p in probes] == ["MlflowClient", "NoOpExperiment"]
    for probe in probes:
        assert probe["run_id"] == run_id and probe["experiment_id"] == run.info.experiment_id
        assert probe["save_dir"] == str(rdir)

    # save_hyperparameters() and log_hyperparams, beside the spec's params; a changed value keeps the first
    assert params["model.init_args.hidden"] == "128" and params["model.class_path"].endswith("LoggedDigits")
    assert params["hparams/hidden"] == "128" and params["hparams/lr"] == "0.003"
    assert params["hparams/optimizer.name"] == "adam" and params["hparams/optimizer.betas"] == "[0.9, 0.999]"
    assert params["hparams/note"] == "first"
    assert tags["trainctl.hparams_changed"] == "hparams/note=epoch 0; hparams/note=epoch 1"

    # the user's own MlflowClient calls: text, dict, figure, artifact
    client = MlflowClient(tracking_uri=mlflow_server)

    def files(path: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert files("plots") == {"plots/epoch0.png", "plots/epoch1.png"}
    assert files("probes") == {"probes/logger-probe-rank0.json"}
    got = Path(client.download_artifacts(run_id, "notes/hello.txt", str(tmp_path)))
    assert got.read_text() == "written on rank 0"
    got = Path(client.download_artifacts(run_id, "config/model.json", str(tmp_path)))
    assert json.loads(got.read_text()) == {"hidden": 128, "layers": [64, 128, 10]}
    assert files("checkpoints/last") == {"checkpoints/last/last.ckpt", "checkpoints/last/last.ckpt.manifest.json"}

    # log_metrics through the sink; `epoch` has one point per step
    assert [m.value for m in client.get_metric_history(run_id, "custom/direct")] == [0.0, 1.0]
    epoch_steps = steps(mlflow_server, run_id, "epoch")
    assert len(epoch_steps) == len(set(epoch_steps)), "one `epoch` point per step"
    assert set(steps(mlflow_server, run_id)) <= set(epoch_steps)


def test_runs_of_one_spec_have_names_of_their_own(mlflow_server: str, tmp_path: Path) -> None:
    from trainctl.spec import load_spec

    spec = load_spec(JOB, [f"workdir={tmp_path}"])
    ids = [tracking.create_run(spec, mlflow_server, "local", source=JOB) for _ in range(2)]
    try:
        names = [run_info(mlflow_server, i).info.run_name for i in ids]
        assert names[0] != names[1] and all(n.startswith("digits-") for n in names)
        assert {run_info(mlflow_server, i).data.tags["trainctl.name"] for i in ids} == {"digits"}
    finally:
        for i in ids:
            tracking.set_state(mlflow_server, i, State.KILLED, reason="test run, never submitted")
