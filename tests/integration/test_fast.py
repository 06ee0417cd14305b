"""`status`, `ls`, `logs` and `cancel` read the store without mlflow (trainctl.store_read) and say the same as
MlflowClient: on a real embedded sqlite store and on a real MLflow server serving that same store.

One short local job gives a FINISHED run with metrics and an attempt; two more runs, created as `submit` creates
them (tracking.create_run), stay PENDING: one in another experiment, cancelled through the server, one cancelled
through the sqlite store. The commands run as subprocesses under `-X importtime`: none may import mlflow, torch
or Lightning.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, SHORT, serve_mlflow, submit
from mlflow import MlflowClient

from trainctl import control, store_read, tracking
from trainctl.spec import parse_spec, read_yaml

pytestmark = pytest.mark.mlflow

HEAVY = {"mlflow", "torch", "pytorch_lightning", "lightning", "lightning_fabric"}
FILTER = "tags.`trainctl.backend` != ''"


def cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI in a fresh interpreter; also return the top-level packages it imported."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainctl.cli", *args], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    mods = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in res.stderr.splitlines()
            if line.startswith("import time:")}
    return res, mods


def _pending_run(uri: str, experiment: str, name: str, scheduler_job_id: str, run_dir: Path) -> str:
    raw = read_yaml(ROOT / "jobs" / "digits.yaml")
    raw.update(name=name, experiment=experiment)
    run_id = tracking.create_run(parse_spec(raw, "digits.yaml", check_classes=False), uri, "local")
    run_dir.mkdir(parents=True)
    cl = MlflowClient(tracking_uri=uri)
    cl.set_tag(run_id, "trainctl.run_dir", str(run_dir))
    cl.set_tag(run_id, "trainctl.scheduler_job_id", scheduler_job_id)  # a job that has ended: nothing to stop
    return run_id


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fast")
    workdir = tmp / "runs"
    sql = tracking.embedded_uri(str(workdir))
    res, done = submit(workdir, sql, [*SHORT, "trainer.max_epochs=1"])
    assert done, res.stdout + res.stderr
    job = MlflowClient(tracking_uri=sql).get_run(done).data.tags["trainctl.scheduler_job_id"]
    other = _pending_run(sql, "other", "pending-other", job, tmp / "other")
    newest = _pending_run(sql, "trainctl-examples", "pending-newest", job, tmp / "newest")
    server = serve_mlflow(workdir, "an MLflow server on the job's store")
    http = next(server)
    yield {"sql": sql, "http": http, "done": done, "other": other, "newest": newest}
    next(server, None)


def test_lean_reads_equal_mlflow_client(farm: dict[str, Any]) -> None:
    refs = {}
    MlflowClient(tracking_uri=farm["sql"]).set_tag(farm["newest"], "test.hidden", "yes")  # as a sweep's trial
    for uri in (farm["sql"], farm["http"]):
        cl = MlflowClient(tracking_uri=uri)
        exps = {e.experiment_id: e.name for e in cl.search_experiments()}
        assert store_read.experiments(uri) == exps
        for rid in (farm["done"], farm["other"], farm["newest"]):
            mine, theirs = store_read.get_run(uri, rid), cl.get_run(rid)
            assert mine is not None
            assert (mine.status, mine.start_time, mine.end_time, mine.experiment_id, mine.tags, mine.metrics) == (
                theirs.info.status, theirs.info.start_time, theirs.info.end_time, theirs.info.experiment_id,
                theirs.data.tags, theirs.data.metrics), uri
            assert mine.metric_steps == {m.key: m.step for m in theirs.data._metric_objs}
        listed = [r.info.run_id for r in cl.search_runs(list(exps), FILTER, order_by=["attributes.start_time DESC"])]
        assert [r.run_id for r in store_read.search(uri, None)] == listed == [
            farm["newest"], farm["other"], farm["done"]]
        assert [r.run_id for r in store_read.search(uri, 1)] == listed[:1]
        assert [r.run_id for r in store_read.search(uri, 1, hide_tag="test.hidden")] == listed[1:2]  # not []
        assert [r.run_id for r in store_read.search(uri, None, state="FINISHED")] == [farm["done"]]
        assert [r.run_id for r in store_read.search(uri, None, experiment="other")] == [farm["other"]]
        job = ("trainctl.scheduler_job_id", cl.get_run(farm["done"]).data.tags["trainctl.scheduler_job_id"])
        assert [r.run_id for r in store_read.search(uri, None, tag=job)] == listed  # a sweep's children: one query
        other = next(i for i, name in exps.items() if name == "other")
        assert [r.run_id for r in store_read.search(uri, None, experiment_id=other, tag=job)] == [farm["other"]]
        assert store_read.search(uri, None, tag=("trainctl.scheduler_job_id", "no-such-job")) == []
        assert store_read.matching_ids(uri, farm["done"][:8]) == [farm["done"]]
        assert store_read.get_run(uri, "0" * 32) is None
        ref = control.find_run(farm["done"][:8], uri)
        refs[uri] = {**vars(ref), "uri": None}
    assert refs[farm["sql"]] == refs[farm["http"]]
    assert refs[farm["sql"]]["metric_steps"]["train/loss"] == 19  # 1 epoch x 20 steps, the first is step 0


def test_commands_import_no_mlflow_torch_lightning(farm: dict[str, Any]) -> None:
    done = farm["done"]
    for uri in (farm["sql"], farm["http"]):
        res, mods = cli("status", done[:10], "--tracking-uri", uri)
        assert res.returncode == 0 and not mods & HEAVY, (mods & HEAVY, res.stderr[-2000:])
        assert "FINISHED" in res.stdout and "step 20, epoch 1 of 1" in res.stdout, res.stdout
        assert "attempts          1" in res.stdout and "first       finished, step 20" in res.stdout, res.stdout
        res, mods = cli("logs", done, "--tracking-uri", uri)
        assert res.returncode == 0 and not mods & HEAVY and "rank 0" in res.stdout, (mods & HEAVY, res.stdout[-500:])
        res, mods = cli("ls", "--tracking-uri", uri)
        assert res.returncode == 0 and not mods & HEAVY, (mods & HEAVY, res.stderr[-2000:])
        rows = [line.split()[0] for line in res.stdout.splitlines()[2:]]
        assert rows == [farm["newest"], farm["other"], done], res.stdout
        for flags, want in ((["--state", "finished"], [done]), (["--experiment", "other"], [farm["other"]]),
                            (["--limit", "1"], [farm["newest"]])):
            res, _ = cli("ls", "--tracking-uri", uri, *flags)
            assert [line.split()[0] for line in res.stdout.splitlines()[2:]] == want, (flags, res.stdout)
    res, mods = cli("cancel", done, "--tracking-uri", farm["sql"])
    assert res.returncode == 2 and "already ended FINISHED" in res.stderr and not mods & HEAVY, res.stderr[-2000:]
    for key, uri in (("other", farm["http"]), ("newest", farm["sql"])):  # the state written through both paths
        res, mods = cli("cancel", farm[key], "--tracking-uri", uri, "--grace", "5")
        assert res.returncode == 0 and not mods & HEAVY, (mods & HEAVY, res.stdout, res.stderr[-2000:])
        run = MlflowClient(tracking_uri=farm["sql"]).get_run(farm[key])
        assert (run.info.status, run.data.tags["trainctl.state"]) == ("KILLED", "KILLED")
        assert run.info.end_time and run.data.tags["trainctl.reason"] == "cancelled by the user"
    res, _ = cli("ls", "--tracking-uri", farm["http"], "--state", "KILLED")
    assert [line.split()[0] for line in res.stdout.splitlines()[2:]] == [farm["newest"], farm["other"]]
