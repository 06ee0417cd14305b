"""The Ray launcher without a cluster: the Jobs API request, the Ray Train plan, quoting, feasibility, the code
shipped, logs split by rank, state mapping, and the driver's final-state rules (on a sqlite MLflow store)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trainctl.errors import UserError
from trainctl.launchers.ray import fit as ray_fit
from trainctl.launchers.ray import submit as rl
from trainctl.runstate import Outcome, State
from trainctl.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path("/shared/runs/digits-ray-0123abcd")


def _spec(*sets: str) -> Spec:
    return load_spec(ROOT / "jobs" / "digits-ray.yaml", list(sets), check_classes=False)


def test_request_is_a_quoted_driver_command_with_the_runtime_env() -> None:
    odd = Path("/shared/my runs/it's-here;$(rm -rf x)/digits-ray-0123abcd")
    req = rl.request(_spec(), odd, "0123abcd" * 4, "trainctl-digits-ray-0123abcd-abcdef")
    assert shlex.split(req["entrypoint"]) == ["python", "-m", "trainctl.launchers.ray.driver", str(odd)]
    assert req["submission_id"] == "trainctl-digits-ray-0123abcd-abcdef"
    assert req["entrypoint_num_cpus"] == 0
    env = req["runtime_env"]["env_vars"]
    assert env["TRAINCTL_RAY_VERSION"] == rl.ray_version() == "2.60.0"  # the pin in pyproject
    assert env["TRAINCTL_RAY_SUBMISSION_ID"] == req["submission_id"] and env["RAY_DEDUP_LOGS"] == "0"
    assert req["runtime_env"]["worker_process_setup_hook"] == "trainctl.launchers.ray.worker.setup_worker_process"
    assert "py_modules" not in req["runtime_env"], "trainctl's own example is installed on every node"
    assert req["metadata"]["trainctl.run_dir"] == str(odd)


def test_scaling_plan_follows_the_spec() -> None:
    sc = rl.scaling(_spec())
    assert sc == {"num_workers": 2, "use_gpu": False, "placement_strategy": "SPREAD",
                  "resources_per_worker": {"CPU": 1.0, "memory": float(2 * 2**30)}}
    sc = rl.scaling(_spec("resources.nodes=3", "resources.devices_per_node=4", "resources.accelerator=gpu",
                          "resources.mem_gb=64", "backend.ray.cpus_per_worker=2.5", "backend.ray.spread=false"))
    assert sc["num_workers"] == 12 and sc["use_gpu"] and sc["placement_strategy"] == "PACK"
    assert sc["resources_per_worker"] == {"CPU": 2.5, "GPU": 1.0, "memory": float(16 * 2**30)}
    assert rl.torch_config(_spec("resources.accelerator=gpu"))["backend"] == "nccl"
    assert rl.torch_config(_spec()) == {"backend": "gloo", "init_method": "env", "timeout_s": 120}
    rc = rl.run_config(_spec("fault_tolerance.max_restarts=5"), RUN_DIR, "sid")
    assert rc == {"name": "sid", "storage_path": f"{RUN_DIR}/ray", "max_failures": 5}


def test_render_shows_request_and_plan() -> None:
    text = rl.render(_spec(), RUN_DIR)
    body = text[text.index("{"): text.index("\n)\n") + 1]
    req = json.loads(body)
    assert req["entrypoint"] == f"python -m trainctl.launchers.ray.driver {RUN_DIR}"
    for part in ("ScalingConfig(num_workers=2", "placement_strategy='SPREAD'", "TorchConfig(backend='gloo'",
                 f"storage_path='{RUN_DIR}/ray'", "FailureConfig(max_failures=3)", "Ray 2.60.0"):
        assert part in text, part


def test_environment_forwards_referenced_and_mlflow_variables_and_masks_secrets(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    monkeypatch.setenv("DATA_ROOT", "/data/x")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter22")
    monkeypatch.setenv("UNRELATED", "no")
    spec = _spec("model.init_args.hidden=${env:HIDDEN_UNSET}", "data.init_args.batch_size=32",
                 'backend.ray.env_vars={"OMP_NUM_THREADS": "1", "MY_API_TOKEN": "s3cr3t"}')
    spec.model.init_args["note"] = "${env:DATA_ROOT}"
    env = rl.environment(spec, "sid")
    assert env["DATA_ROOT"] == "/data/x" and env["MLFLOW_TRACKING_PASSWORD"] == "hunter22"
    assert env["OMP_NUM_THREADS"] == "1" and "UNRELATED" not in env and "HIDDEN_UNSET" not in env
    spec.backend.ray.env_vars["ROOT_COPY"] = "${env:DATA_ROOT}/sub"
    assert rl.environment(spec, "sid")["ROOT_COPY"] == "/data/x/sub", "resolved from this client's environment"
    text = rl.render(spec, RUN_DIR)
    assert "hunter22" not in text and "s3cr3t" not in text and '"MY_API_TOKEN": "***"' in text


def test_submission_id_has_no_underscore() -> None:
    sid = rl.submission_id(_spec(), Path("/runs/my_job.v2-0123abcd"))
    assert "_" not in sid and sid.startswith("trainctl-my-job-v2-0123abcd-")


def test_infeasible_requests() -> None:
    nodes = [{"CPU": 1.0, "memory": 6.0 * 2**30}, {"CPU": 1.0, "memory": 6.0 * 2**30}]
    assert ray_fit.infeasible(nodes, {"CPU": 1.0, "memory": 2.0 * 2**30}, 2) is None
    why = ray_fit.infeasible(nodes, {"CPU": 1.0, "GPU": 1.0}, 2)
    assert why and "2 GPU in all" in why and "the cluster has 0" in why
    why = ray_fit.infeasible(nodes, {"CPU": 1.0}, 3)
    assert why and "3 CPU in all" in why and "has 2" in why
    why = ray_fit.infeasible([{"CPU": 1.5}, {"CPU": 1.5}], {"CPU": 1.0}, 3)  # enough in total, not per node
    assert why and "no placement fits: 2 of 3" in why
    assert ray_fit.infeasible([], {"CPU": 1.0}, 1)


def test_user_code_ships_modules_that_are_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodel.py").write_text("X = 1\n")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = _spec("model.class_path=mymodel.Net", "data.class_path=mypkg.nets.Data",
                 'callbacks=[{"class_path": "trainctl.testing.faults.SlowSteps"}, '
                 '{"class_path": "pytorch_lightning.callbacks.Timer"}]')
    assert rl.user_code(spec) == [str((tmp_path / "mymodel.py").resolve()), str((tmp_path / "mypkg").resolve())]
    req = rl.request(spec, RUN_DIR, "r", "s")
    assert req["runtime_env"]["py_modules"] == rl.user_code(spec)
    assert rl.user_code(_spec()) == []


def test_split_logs_by_rank() -> None:
    text = "\n".join([
        "2026-11-26 INFO job_manager.py:581 -- Runtime env is setting up.",
        "\x1b[36m(RayTrainWorker pid=11, ip=10.0.0.1)\x1b[0m Setting up process group",
        "(RayTrainWorker pid=11, ip=10.0.0.1) trainctl: rank 1/2 on node worker-1 (ray job s, node ab, pid 11)",
        "(RayTrainWorker pid=10, ip=10.0.0.2) trainctl: rank 0/2 on node head (ray job s, node cd, pid 10)",
        "(RayTrainWorker pid=10, ip=10.0.0.2) epoch 1",
        "(TrainController pid=9) Started training worker group",
        "(RayTrainWorker pid=12, ip=10.0.0.1) trainctl: rank 1/2 on node worker-1 (ray job s, node ab, pid 12)",
        "trainctl: run r FINISHED",
    ])
    out = rl.split_logs(text, "s")
    assert list(out) == ["ray job s driver", "ray job s rank 0 (pid 10)", "ray job s rank 1 (pid 11)",
                         "ray job s rank 1 (pid 12)"]
    assert "Setting up process group" in out["ray job s rank 1 (pid 11)"]
    assert "epoch 1" in out["ray job s rank 0 (pid 10)"] and "Started training" in out["ray job s driver"]
    assert all("rank 1 " in k for k in out if k.endswith("(pid 11)") or k.endswith("(pid 12)"))


def test_requeue_self_raises_for_ray_to_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the train function's thread it raises (Ray retries the group); on another (the watchdog's) it leaves."""
    import threading

    from trainctl.injob import RankInfo
    from trainctl.launchers.ray import injob

    rank = RankInfo(1, 0, 2, 1, 2, "worker-1", "s")
    ray_injob = injob.RayInJob()  # made on this (the train function's) thread
    with pytest.raises(injob.RestartRequested):
        ray_injob.requeue_self(rank)
    exits: list[int] = []
    monkeypatch.setattr(injob.os, "_exit", lambda code: exits.append(code) or (_ for _ in ()).throw(SystemExit(code)))

    def watchdog() -> None:
        with pytest.raises(SystemExit):
            ray_injob.requeue_self(rank)

    t = threading.Thread(target=watchdog)
    t.start()
    t.join()
    assert exits == [1]


class _FakeClient:
    def __init__(self, status: str = "RUNNING", version: str = "2.60.0") -> None:
        self.status, self._server_ray_version, self.stopped = status, version, False

    def get_job_status(self, sid: str) -> Any:
        if self.status == "missing":
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return SimpleNamespace(value=self.status)

    def stop_job(self, sid: str) -> bool:
        self.stopped, self.status = True, "STOPPED"  # what the Jobs API reports once the driver is gone
        return True


@pytest.mark.parametrize(("raw", "state"), [("PENDING", State.PENDING), ("RUNNING", State.RUNNING),
                                            ("STOPPED", State.KILLED), ("SUCCEEDED", State.FINISHED),
                                            ("FAILED", State.FAILED), ("missing", None)])
def test_status_maps_job_states(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raw: str, state: State | None
                                ) -> None:
    fake = _FakeClient(raw)
    monkeypatch.setattr(rl, "_client", lambda address: fake)
    assert rl.LAUNCHER.status(tmp_path, "sid") is state
    report = rl.LAUNCHER.cancel(tmp_path, "sid", 5.0, lambda line: None)
    assert fake.stopped == (raw in ("PENDING", "RUNNING"))
    assert not report.left and report.done and (report.done[-1] == "Ray job sid ended (KILLED)") == fake.stopped


def test_cluster_with_another_ray_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rl, "_client", lambda address: _FakeClient(version="2.59.0"))
    with pytest.raises(UserError, match=r"runs Ray 2\.59\.0, this client Ray 2\.60\.0"):
        rl.check_cluster(_spec(), "http://127.0.0.1:1")


def test_ray_strategy_in_either_lightning_namespace() -> None:
    from trainctl.components import namespace_named
    from trainctl.launchers.ray.worker import ray_strategy

    for name in ("pytorch_lightning", "lightning.pytorch"):
        ns = namespace_named(name)
        strategy = ray_strategy(ns, _spec(), world_size=2)
        assert isinstance(strategy, ns.pl.strategies.DDPStrategy)
        env = strategy.cluster_environment
        assert isinstance(env, ns.fabric.plugins.environments.LightningEnvironment)
        assert env.creates_processes_externally
        assert ray_strategy(ns, _spec(), world_size=1) is None


def test_report_every_epoch_callback_binds_to_each_namespace() -> None:
    from trainctl.components import namespace_named
    from trainctl.launchers.ray import worker as ray_worker

    assert issubclass(ray_worker.ReportEveryEpoch, namespace_named("pytorch_lightning").pl.Callback)
    assert issubclass(ray_worker.ReportEveryEpochLightning, namespace_named("lightning.pytorch").pl.Callback)


def test_driver_final_state(tmp_path: Path) -> None:
    """After fit(): the workers' verdict when recorded; else FAILED with Ray's error; a final state is kept."""
    from trainctl import tracking
    from trainctl.launchers.ray import driver as ray_driver
    from trainctl.launchers.ray import worker as ray_worker
    from trainctl.rundir import JobFile
    from trainctl.runstate import Attempt, Attempts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(f"workdir={tmp_path}")  # the job file, not the spec, says where the workers report

    def run(outcome: str | None, state: State = State.RUNNING) -> tuple[Path, JobFile]:
        run_id = tracking.create_run(spec, uri, "ray")
        tracking.set_state(uri, run_id, state)
        rdir = tmp_path / run_id
        job = JobFile(run_id=run_id, tracking_uri=uri, backend="ray", spec=spec.to_dict())
        job.write(rdir)
        Attempts(rdir).save(Attempt(1, 1.0, "head", "s", "first", ended=2.0 if outcome else None,
                                    outcome=Outcome(outcome) if outcome else None,
                                    reason=f"{outcome}: why" if outcome else None))
        return rdir, job

    rdir, job = run("requeue")
    assert ray_driver._finish(job, rdir, spec, RuntimeError("WorkerGroupError: rank 1 died")) == 1
    reason = tracking.client(uri).get_run(job.run_id).data.tags["trainctl.reason"]
    assert tracking.current_state(uri, job.run_id) is State.FAILED
    assert "max_failures=3" in reason and "rank 1 died" in reason and "last attempt: requeue: why" in reason
    rdir, job = run(None)
    assert ray_driver._finish(job, rdir, spec, RuntimeError("boom")) == 1
    assert Attempts(rdir).all()[-1].outcome == "failed", "the open attempt is closed"
    rdir, job = run("finished")  # rank 0 could not reach MLflow: the driver records its verdict
    assert ray_driver._finish(job, rdir, spec, None) == 0
    assert tracking.current_state(uri, job.run_id) is State.FINISHED
    rdir, job = run(None, State.KILLED)  # a cancel wins over everything
    assert ray_driver._finish(job, rdir, spec, RuntimeError("killed")) == 1
    assert tracking.current_state(uri, job.run_id) is State.KILLED
    rdir, job = run(None)  # a killed group: the next group's rank 0 closes the attempt as a requeue
    assert ray_worker._rank_zero_view(rdir, job) == (1, "")
    ray_worker._close_killed_attempt(rdir)
    last = Attempts(rdir).all()[-1]
    assert last.outcome == "requeue" and last.reason.startswith("killed-without-verdict:")
    # A group Ray restarts after the run already ended (a stalled rank left after a "failed" verdict) or was
    # cancelled does not train; `trainctl resume` (its cause marker) does.
    rdir, job = run("failed")
    assert "already ended the run failed" in ray_worker._rank_zero_view(rdir, job)[1]
    (rdir / "attempts" / "next-cause").write_text("resume")
    assert ray_worker._rank_zero_view(rdir, job) == (1, "")
    rdir, job = run("requeue", State.KILLED)
    assert ray_worker._rank_zero_view(rdir, job)[1] == "the run is KILLED (cancelled)"


def test_dry_run_through_the_cli_writes_nothing(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "trainctl.cli", "submit", "jobs/digits-ray.yaml", "--dry-run",
                          "--set", f"workdir={tmp_path}/w"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "JobSubmissionClient.submit_job(" in res.stdout and "TorchTrainer" in res.stdout
    assert not (tmp_path / "w").exists()


def test_setup_hook_module_does_not_import_torch() -> None:
    """The setup hook runs in every process of the job before Ray sets OMP_NUM_THREADS: importing torch there
    sized each worker's OpenMP pool to every core of the node (a 5-20x slower digits step on 2 cores)."""
    code = ("import sys, trainctl.launchers.ray.worker as d; d.setup_worker_process(); "
            "print(sorted(m for m in ('torch', 'mlflow', 'pytorch_lightning', 'ray') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_training_thread_gets_the_workers_cpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from trainctl.launchers.ray import worker as ray_worker

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        ray_worker._threads(_spec("backend.ray.cpus_per_worker=3"))
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for a 1-CPU actor
        ray_worker._threads(_spec("backend.ray.cpus_per_worker=3"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
