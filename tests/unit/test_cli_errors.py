"""Bad input through the real CLI: exit 2, every problem listed with a HINT, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def trainctl(*args: str, cwd: Path, module: str = "trainctl.cli") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["TRAINCTL_STATE_DIR"] = str(cwd / "state")  # no store was ever used
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_clean_usage_error(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "\nerror: " in f"\n{res.stderr}", res.stderr  # MLflow may log INFO lines before it
    assert "HINT:" in res.stderr, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr


def test_validate_a_missing_file(tmp_path: Path) -> None:
    res = trainctl("validate", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert_clean_usage_error(res, "nope.yaml", "no such file")


def test_validate_a_directory(tmp_path: Path) -> None:
    assert_clean_usage_error(trainctl("validate", str(tmp_path), cwd=tmp_path), "no such file")


@pytest.mark.parametrize(("text", "words"), [
    ("name: [unclosed\nmodel: {", "not valid YAML"),
    ("name: a\n\tmodel: x\n", "not valid YAML"),
    ("name: !!python/object/apply:os.system [id]\n", "not valid YAML"),
    ("- name: a\n- name: b\n", "must be a YAML mapping"),
    ("just a string\n", "must be a YAML mapping"),
    ("", "must be a YAML mapping"),
    ("42\n", "must be a YAML mapping"),
], ids=["unclosed", "tab", "python-tag", "list", "string", "empty", "number"])
def test_validate_bad_yaml(tmp_path: Path, text: str, words: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    assert_clean_usage_error(trainctl("validate", str(job), cwd=tmp_path), str(job), words)


def test_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: a\nmodel: [unclosed\n")
    res = trainctl("validate", str(job), cwd=tmp_path)
    assert_clean_usage_error(res, "not valid YAML", f'in "{job}", line 2')
    assert "<unicode string>" not in res.stderr, res.stderr


def test_validate_a_binary_file(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_bytes(b"name: \xff\xfe\x00\x01")
    assert_clean_usage_error(trainctl("validate", str(job), cwd=tmp_path), "cannot read it")


def test_validate_lists_every_problem(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "jobs" / "digits.yaml").read_text())
    raw["name"] = "my job; rm -rf /"
    raw["resources"]["nodez"] = 2
    raw["resources"]["mem_gb"] = -1
    raw["checkpoint"]["mode"] = "maximum"
    raw["model"]["init_args"]["hidden"] = "wide"
    raw["trainer"]["devices"] = 4
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    res = trainctl("validate", str(job), "--set", "tracking.uri=ftp://x", cwd=tmp_path)
    paths = ["name:", "resources.nodez:", "resources.mem_gb:", "checkpoint.mode:", "model.init_args.hidden:",
             "trainer.devices:", "tracking.uri:"]
    assert_clean_usage_error(res, "7 problems found", *paths, "did you mean 'nodes'?")
    assert res.stderr.count("HINT:") == 7
    assert list(tmp_path.iterdir()) == [job]


def test_status_of_an_unknown_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/x.db"
    res = trainctl("status", "0123456789abcdef0123456789abcdef", "--tracking-uri", uri, cwd=tmp_path)
    assert_clean_usage_error(res, "RUN_ID", "no run", "no tracking store there")
    assert res.stdout == ""
    assert list(tmp_path.iterdir()) == [], "a read created a store"


@pytest.mark.parametrize(("run_id", "words"), [("abc12", "at least 6 characters"), ("0123; rm", "not a run id")])
def test_a_run_id_that_cannot_be_one(tmp_path: Path, run_id: str, words: str) -> None:
    assert_clean_usage_error(trainctl("logs", run_id, cwd=tmp_path), "RUN_ID", words)


def test_ls_and_status_with_no_store_anywhere_create_none(tmp_path: Path) -> None:
    res = trainctl("ls", cwd=tmp_path)
    assert res.returncode == 0 and "nothing submitted yet" in res.stderr, res.stderr
    assert_clean_usage_error(trainctl("status", "0123456789ab", cwd=tmp_path), "no run", "no tracking store")
    assert list(tmp_path.iterdir()) == [], "a read created a store"


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    res = trainctl("--version", cwd=tmp_path, module="trainctl")
    assert res.returncode == 0 and res.stdout.startswith("trainctl "), res.stderr


def test_validate_reports_every_section_when_the_model_does_not_import(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "jobs" / "digits.yaml").read_text())
    raw["model"]["class_path"] = "no_such_module_here.Model"
    raw["data"]["init_args"]["batch_size"] = "many"
    raw["data"]["init_args"]["shufle"] = True
    raw["trainer"]["max_epochs"] = "two"
    raw["trainer"]["devices"] = 4
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    res = trainctl("validate", str(job), cwd=tmp_path)
    assert_clean_usage_error(res, "5 problems found", "model.class_path:", "data.init_args.batch_size:",
                             "data.init_args.shufle:", "trainer.max_epochs:", "trainer.devices:", "PYTHONPATH")


def test_a_gpu_the_local_machine_cannot_provide_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No visible GPU (as on any machine with CUDA_VISIBLE_DEVICES empty): refused before anything is created."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    for command in ("validate", "submit"):
        res = trainctl(command, str(ROOT / "jobs" / "digits.yaml"), "--set", "resources.accelerator=gpu",
                       "--set", f"workdir={tmp_path}", cwd=ROOT)
        assert_clean_usage_error(res, "resources.accelerator", "no visible GPU", "accelerator: cpu")
    assert not list(tmp_path.iterdir()), "no run was created"
