"""The job spec: every bad field is reported at its YAML path with a HINT, all problems at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trainctl import components
from trainctl.errors import UserError
from trainctl.spec import (
    Accelerator,
    apply_override,
    load_spec,
    parse_spec,
    spec_from_dict,
)

from .spec_helpers import DELETE, DIGITS, mutate, only_problem, problems_of

# ---------------------------------------------------------------- the valid spec


def test_digits_spec_is_valid_and_round_trips(raw: dict[str, Any]) -> None:
    spec = parse_spec(raw)
    assert spec.resources.devices_per_node == 2
    assert spec.resources.accelerator is Accelerator.cpu
    again = spec_from_dict(spec.to_dict())
    assert again == spec
    assert yaml.safe_load(yaml.safe_dump(spec.to_dict())) == spec.to_dict()


def test_load_spec_reads_the_file() -> None:
    spec = load_spec(DIGITS, ["trainer.max_epochs=3"])
    assert spec.trainer["max_epochs"] == 3


# ---------------------------------------------------------------- one bad field at a time

# (mutated path, value, problem path, words the message must contain)
SINGLE = [
    ("name", DELETE, "name", "required"),
    ("name", "my job", "name", "not a valid job name"),
    ("name", "a;rm -rf /", "name", "job name"),
    ("name", "../../etc", "name", "job name"),
    ("name", 42, "name", "expected a string"),
    ("name", "x" * 65, "name", "job name"),
    ("model", DELETE, "model", "required"),
    ("model", "trainctl.examples.digits.DigitsClassifier", "model", "expected a mapping"),
    ("model.class_path", DELETE, "model.class_path", "required"),
    ("model.class_path", "trainctl.examples.digits.Nope", "model.class_path", "has no class 'Nope'"),
    ("model.class_path", "trainctl.nope.Model", "model.class_path", "cannot import"),
    ("model.class_path", "collections.OrderedDict", "model.class_path", "not a LightningModule"),
    ("model.class_path", "os.system", "model.class_path", "not a class"),
    ("model.class_path", "../../x", "model.class_path", "class path"),
    ("model.init_args", [1], "model.init_args", "expected a mapping"),
    ("model.init_args.hidden", "wide", "model.init_args.hidden", "expected int"),
    ("model.init_args.hiden", 3, "model.init_args.hiden", "no argument 'hiden'"),
    ("data.class_path", "trainctl.examples.digits.DigitsClassifier", "data.class_path", "LightningDataModule"),
    ("data.init_args.batch_size", "big", "data.init_args.batch_size", "expected int"),
    ("experiment", "x; rm -rf /", "experiment", "experiment name"),
    ("experiment", "../../etc", "experiment", "experiment name"),
    ("seed_everything", -1, "seed_everything", "out of range"),
    ("seed_everything", True, "seed_everything", "expected an integer or null"),
    ("seed_everything", "42", "seed_everything", "expected an integer or null"),
    ("trainer", ["max_epochs"], "trainer", "expected a mapping"),
    ("trainer.max_epochs", "ten", "trainer.max_epochs", "expected int or null"),
    ("trainer.max_epoch", 3, "trainer.max_epoch", "not a Trainer argument"),
    ("callbacks", {"class_path": "x.Y"}, "callbacks", "expected a list"),
    ("callbacks", ["x.Y"], "callbacks[0]", "expected a mapping"),
    ("resources", "big", "resources", "expected a mapping"),
    ("resources.nodes", 0, "resources.nodes", "out of range"),
    ("resources.nodes", -1, "resources.nodes", "out of range"),
    ("resources.nodes", 2, "resources.nodes", "cluster backend"),
    ("resources.nodes", "2", "resources.nodes", "expected an integer"),
    ("resources.nodes", True, "resources.nodes", "expected an integer"),
    ("resources.nodes", 1.5, "resources.nodes", "expected an integer"),
    ("resources.nodes", 10**30, "resources.nodes", "out of range"),
    ("resources.devices_per_node", 1000, "resources.devices_per_node", "out of range"),
    ("resources.accelerator", "tpu", "resources.accelerator", "valid: cpu, gpu, auto"),
    ("resources.mem_gb", -4, "resources.mem_gb", "out of range"),
    ("resources.mem_gb", float("nan"), "resources.mem_gb", "finite"),
    ("resources.mem_gb", float("inf"), "resources.mem_gb", "finite"),
    ("resources.time_min", 0, "resources.time_min", "out of range"),
    ("checkpoint.mode", "maximum", "checkpoint.mode", "valid: min, max"),
    ("checkpoint.monitor", "", "checkpoint.monitor", "metric name"),
    ("checkpoint.save_top_k", -2, "checkpoint.save_top_k", "out of range"),
    ("checkpoint.save_last", "yes", "checkpoint.save_last", "true/false"),
    ("checkpoint.every_n_train_steps", 0, "checkpoint.every_n_train_steps", "out of range"),
    ("early_stopping.monitor", DELETE, "early_stopping.monitor", "required"),
    ("early_stopping.patience", -1, "early_stopping.patience", "out of range"),
    ("fault_tolerance.on_failure", "retry", "fault_tolerance.on_failure", "requeue, fail"),
    ("fault_tolerance.max_restarts", -1, "fault_tolerance.max_restarts", "out of range"),
    ("fault_tolerance.signal_lead_s", 3600, "fault_tolerance.signal_lead_s", "time limit"),
    ("tracking.uri", "mlflow.example.com", "tracking.uri", "not an MLflow tracking URI"),
    ("tracking.uri", "http://h:5000/;rm -rf /", "tracking.uri", "characters"),
    ("tracking.uri", "sqlite:///../../etc/x.db", "tracking.uri", "'..'"),
    ("tracking.redact", "model.init_args.lr", "tracking.redact", "expected a list of strings"),
    ("tracking.redact", [1], "tracking.redact[0]", "expected a string"),
    ("workdir", "../../etc", "workdir", "directory path"),
    ("workdir", "runs; rm -rf ~", "workdir", "directory path"),
    ("workdir", "$(id)", "workdir", "directory path"),
    ("workdir", "runs\0x", "workdir", "control character"),
    ("workdir", "", "workdir", "directory path"),
    ("backend.kind", "k8s", "backend.kind", "valid: local, slurm, ray"),
    ("backend.slurm.sbatch", {"time": "1:00:00"}, "backend.slurm.sbatch.time", "set by trainctl"),
    ("backend.slurm.sbatch", {"mail-type": "END;id"}, "backend.slurm.sbatch.mail-type", "sbatch value"),
    ("backend.slurm.sbatch", {"exclusive": False}, "backend.slurm.sbatch.exclusive", "sbatch value"),
    ("backend.slurm.setup", ["module load x\nrm -rf /"], "backend.slurm.setup[0]", "control character"),
    ("backend.slurm.partition", "gpu;id", "backend.slurm.partition", "SLURM partition"),
    ("backend.ray.env_vars", {"TOKEN": 5}, "backend.ray.env_vars.TOKEN", "expected a string"),
    ("backend.ray.env_vars", {"BAD NAME": "x"}, "backend.ray.env_vars.BAD NAME", "environment variable"),
    ("backend.ray.address", "not a url", "backend.ray.address", "Ray address"),
]


@pytest.mark.parametrize(("path", "value", "where", "words"), SINGLE, ids=[f"{s[0]}={s[1]!r}"[:60] for s in SINGLE])
def test_single_mutation_names_the_field(raw: dict[str, Any], path: str, value: Any, where: str,
                                         words: str) -> None:
    prob = only_problem(mutate(raw, path, value))
    assert prob.path == where
    assert words in prob.message or words in prob.hint, prob.render()


def test_unknown_keys_suggest_the_close_name(raw: dict[str, Any]) -> None:
    cases = {"experiement": "experiment", "resources.nodez": "nodes", "checkpoint.save_topk": "save_top_k",
             "tracking.log_every_n_step": "log_every_n_steps", "backend.knd": "kind",
             "fault_tolerance.max_restart": "max_restarts", "model.init_arg": "init_args"}
    for path, close in cases.items():
        prob = only_problem(mutate(raw, path, 1))
        assert prob.path == path
        assert prob.message == "unknown key"
        assert f"did you mean '{close}'?" in prob.hint


def test_unknown_key_without_a_close_name_lists_the_valid_keys(raw: dict[str, Any]) -> None:
    prob = only_problem(mutate(raw, "resources.zzzz", 1))
    assert prob.path == "resources.zzzz"
    assert "nodes" in prob.hint and "devices_per_node" in prob.hint


def test_validate_reports_every_problem_at_once(raw: dict[str, Any]) -> None:
    bad = mutate(raw, "resources.nodez", 1)  # a structural problem
    bad = mutate(bad, "name", "a b")  # a semantic one
    bad = mutate(bad, "trainer.devices", 2)  # a class/trainer one
    found = problems_of(bad)
    assert sorted(p.path for p in found) == ["name", "resources.nodez", "trainer.devices"]


def test_many_problems_in_every_kind_of_section(raw: dict[str, Any]) -> None:
    bad = mutate(raw, "resources.nodes", 0)
    bad = mutate(bad, "checkpoint.mode", "up")
    bad = mutate(bad, "model.init_args.hidden", "wide")
    bad = mutate(bad, "model.init_args.lr", "fast")
    bad = mutate(bad, "workdir", "../x")
    bad = mutate(bad, "tracking.uri", "nope")
    paths = {p.path for p in problems_of(bad)}
    assert paths == {"resources.nodes", "checkpoint.mode", "model.init_args.hidden", "model.init_args.lr",
                     "workdir", "tracking.uri"}


def test_a_broken_section_does_not_hide_the_others(raw: dict[str, Any]) -> None:
    bad = mutate(raw, "resources", [1, 2])
    bad = mutate(bad, "model.init_args.dropout", "lots")
    assert {p.path for p in problems_of(bad)} == {"resources", "model.init_args.dropout"}


def test_problems_render_with_hints(raw: dict[str, Any]) -> None:
    with pytest.raises(UserError) as info:
        parse_spec(mutate(mutate(raw, "name", "a b"), "resources.nodes", 0), "jobs/x.yaml")
    text = str(info.value)
    assert text.startswith("jobs/x.yaml: 2 problems found")
    assert text.count("HINT:") == 2


def test_a_yaml_alias_cycle_is_refused(raw: dict[str, Any]) -> None:
    loop: list[Any] = []
    loop.append(loop)
    prob = only_problem(mutate(raw, "model.init_args.hidden", loop))
    assert prob.path.startswith("model.init_args.hidden")
    assert "itself" in prob.message


def test_huge_integers_anywhere_are_refused(raw: dict[str, Any]) -> None:
    prob = only_problem(mutate(raw, "trainer.max_epochs", 2**70), check_classes=False)
    assert prob.path == "trainer.max_epochs"
    assert "too large" in prob.message


def test_nul_bytes_anywhere_are_refused(raw: dict[str, Any]) -> None:
    prob = only_problem(mutate(raw, "data.init_args.name", "a\0b"), check_classes=False)
    assert prob.path == "data.init_args.name"
    assert "NUL" in prob.message


# ---------------------------------------------------------------- --set overrides


def test_set_nested_value(raw: dict[str, Any]) -> None:
    apply_override(raw, "model.init_args.hidden=64")
    apply_override(raw, "resources.mem_gb=1.5")
    assert parse_spec(raw).model.init_args["hidden"] == 64
    assert raw["resources"]["mem_gb"] == 1.5


def test_set_list_item_by_index(raw: dict[str, Any]) -> None:
    raw["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.EarlyStopping",
                         "init_args": {"monitor": "val/loss"}}]
    apply_override(raw, "callbacks.0.init_args.patience=7")
    apply_override(raw, "backend.slurm.setup=[module load a, module load b]")
    apply_override(raw, "backend.slurm.setup.1=module load c")
    spec = parse_spec(raw)
    assert spec.callbacks[0].init_args == {"monitor": "val/loss", "patience": 7}
    assert spec.backend.slurm.setup == ["module load a", "module load c"]


def test_set_creates_new_keys(raw: dict[str, Any]) -> None:
    apply_override(raw, "tracking.uri=http://127.0.0.1:5000")
    apply_override(raw, "backend.slurm.partition=debug")
    apply_override(raw, "backend.ray.env_vars.HF_TOKEN=${env:HF_TOKEN}")
    spec = parse_spec(raw)
    assert spec.tracking.uri == "http://127.0.0.1:5000"
    assert spec.backend.slurm.partition == "debug"
    assert spec.backend.ray.env_vars == {"HF_TOKEN": "${env:HF_TOKEN}"}


def test_set_values_are_yaml(raw: dict[str, Any]) -> None:
    apply_override(raw, "seed_everything=null")
    apply_override(raw, "trainer.deterministic=false")
    apply_override(raw, "experiment='123'")
    spec = parse_spec(raw)
    assert spec.seed_everything is None and spec.trainer["deterministic"] is False and spec.experiment == "123"


def test_set_a_wrong_type_is_reported_at_its_path(raw: dict[str, Any]) -> None:
    apply_override(raw, "resources.nodes=many")
    assert only_problem(raw).path == "resources.nodes"


@pytest.mark.parametrize(("assignment", "words"), [
    ("resources.nodes", "is not key.path=value"),
    ("=3", "is not key.path=value"),
    ("resources..nodes=2", "empty or invalid key"),
    ("name=[unclosed", "not valid YAML"),
    ("name=!!python/object/apply:os.system [id]", "not valid YAML"),
    ("name.first=x", "not a mapping or list"),
    ("callbacks.0.class_path=x.Y", "not in the list"),
    ("backend.slurm.setup.x=1", "not in the list"),
])
def test_set_bad_syntax(raw: dict[str, Any], assignment: str, words: str) -> None:
    raw["backend"] = {"kind": "local", "slurm": {"setup": ["a"]}}
    raw["callbacks"] = []
    with pytest.raises(UserError) as info:
        apply_override(raw, assignment)
    (prob,) = info.value.problems
    assert prob.path.startswith("--set")
    assert words in prob.message
    assert prob.hint


def test_load_spec_collects_override_and_spec_problems(tmp_path: Path, raw: dict[str, Any]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(mutate(raw, "name", "bad name")))
    with pytest.raises(UserError) as info:
        load_spec(job, ["nope", "resources.nodes=0", "trainer.max_epochs=ten"])
    paths = [p.path for p in info.value.problems]
    assert paths[0] == "--set"
    assert {"name", "resources.nodes", "trainer.max_epochs"} <= set(paths)
    assert info.value.source == str(job)


# ---------------------------------------------------------------- trainer arguments trainctl owns


@pytest.mark.parametrize("arg", sorted(components.OWNED_TRAINER_ARGS))
def test_owned_trainer_args_point_to_their_section(raw: dict[str, Any], arg: str) -> None:
    prob = only_problem(mutate(raw, f"trainer.{arg}", 1))
    assert prob.path == f"trainer.{arg}"
    assert prob.message == "is set by trainctl"
    assert components.OWNED_TRAINER_ARGS[arg] in prob.hint


def test_owned_trainer_arg_hints_name_the_right_sections(raw: dict[str, Any]) -> None:
    expected = {"devices": "resources.devices_per_node", "num_nodes": "resources.nodes",
                "accelerator": "resources.accelerator", "logger": "tracking", "default_root_dir": "workdir",
                "enable_checkpointing": "checkpoint", "log_every_n_steps": "tracking.log_every_n_steps"}
    for arg, section in expected.items():
        assert section in only_problem(mutate(raw, f"trainer.{arg}", 1)).hint


def test_trainer_values_are_type_checked(raw: dict[str, Any]) -> None:
    bad = mutate(raw, "trainer.precision", "17")
    bad = mutate(bad, "trainer.gradient_clip_val", "big")
    found = {p.path: p for p in problems_of(bad)}
    assert set(found) == {"trainer.precision", "trainer.gradient_clip_val"}
    assert "'16-mixed'" in found["trainer.precision"].message
