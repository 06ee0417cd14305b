"""The job spec's class paths: nested init_args, both Lightning namespaces, ${env:NAME} references."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from trainctl import components
from trainctl.spec import (
    Accelerator,
    Component,
    env_refs,
    parse_spec,
    resolve_env,
)

from . import nested_models
from .spec_helpers import NM, mutate, only_problem, problems_of

# ---------------------------------------------------------------- class paths and nested init_args


def encoder_spec(raw: dict[str, Any], encoder: Any, **extra: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out["model"] = {"class_path": f"{NM}.WithEncoder", "init_args": {"encoder": encoder, **extra}}
    out["data"] = None
    return out


def enc(init_args: dict[str, Any] | None = None, class_path: str = "Encoder") -> dict[str, Any]:
    return {"class_path": f"{NM}.{class_path}" if "." not in class_path else class_path,
            "init_args": init_args or {}}


def test_nested_class_path_is_valid(raw: dict[str, Any]) -> None:
    spec = parse_spec(encoder_spec(raw, enc({"width": 4, "depth": 2}), lr=0.1))
    model = components.instantiate(spec.model, nested_models.pl.LightningModule)
    assert isinstance(model.encoder, nested_models.Encoder)
    assert len(model.encoder.layers) == 2


def test_wrong_nested_init_arg_is_reported_at_its_full_path(raw: dict[str, Any]) -> None:
    prob = only_problem(encoder_spec(raw, enc({"width": "wide"})))
    assert prob.path == "model.init_args.encoder.init_args.width"
    assert "expected int" in prob.message and "'wide'" in prob.message
    assert "Encoder" in prob.hint


def test_unknown_nested_init_arg_suggests_the_close_name(raw: dict[str, Any]) -> None:
    prob = only_problem(encoder_spec(raw, enc({"widht": 3})))
    assert prob.path == "model.init_args.encoder.init_args.widht"
    assert "did you mean 'width'?" in prob.hint


def test_missing_nested_required_arg(raw: dict[str, Any]) -> None:
    prob = only_problem(encoder_spec(raw, enc({"in_features": 3}, "torch.nn.Linear")))
    assert prob.path == "model.init_args.encoder.init_args.out_features"
    assert "required" in prob.message


def test_nested_class_path_that_does_not_import(raw: dict[str, Any]) -> None:
    prob = only_problem(encoder_spec(raw, enc(class_path="Nope")))
    assert prob.path == "model.init_args.encoder.class_path"
    assert "no class 'Nope'" in prob.message


def test_nested_class_of_the_wrong_base(raw: dict[str, Any]) -> None:
    prob = only_problem(encoder_spec(raw, enc(class_path="collections.OrderedDict")))
    assert prob.path == "model.init_args.encoder.class_path"
    assert "torch.nn" in prob.message and "Module" in prob.message


def test_nested_and_top_level_problems_together(raw: dict[str, Any]) -> None:
    found = problems_of(encoder_spec(raw, enc({"width": "wide", "depht": 1}), lr="fast"))
    assert {p.path for p in found} == {"model.init_args.encoder.init_args.width",
                                       "model.init_args.encoder.init_args.depht", "model.init_args.lr"}


def test_missing_required_top_level_init_arg(raw: dict[str, Any]) -> None:
    out = encoder_spec(raw, None)
    del out["model"]["init_args"]["encoder"]
    prob = only_problem(out)
    assert prob.path == "model.init_args.encoder"
    assert "required" in prob.message


def test_model_class_path_that_is_a_function(raw: dict[str, Any]) -> None:
    prob = only_problem(mutate(raw, "model.class_path", f"{NM}.not_a_class"))
    assert prob.path == "model.class_path"
    assert "not a class" in prob.message


def test_callback_init_args_are_checked(raw: dict[str, Any]) -> None:
    raw["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.EarlyStopping",
                         "init_args": {"monitor": "val/loss", "patience": "long"}}]
    prob = only_problem(raw)
    assert prob.path == "callbacks[0].init_args.patience"


# ---------------------------------------------------------------- both Lightning namespaces


def test_module_from_the_unified_lightning_package_validates(raw: dict[str, Any]) -> None:
    raw["model"] = {"class_path": f"{NM}.NewNamespaceModule", "init_args": {"hidden": 8}}
    raw["data"] = {"class_path": f"{NM}.NewNamespaceData", "init_args": {"batch_size": 2}}
    raw["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                         "init_args": {"monitor": "val/loss"}}]
    spec = parse_spec(raw)
    ns = components.namespace_of(components.import_class(spec.model.class_path))
    assert ns is not None and ns.name == "lightning.pytorch"


def test_data_module_from_the_other_namespace_is_refused(raw: dict[str, Any]) -> None:
    raw["model"] = {"class_path": f"{NM}.NewNamespaceModule"}
    raw["data"] = {"class_path": f"{NM}.OldNamespaceData"}
    prob = only_problem(raw)
    assert prob.path == "data.class_path"
    assert "pytorch_lightning.LightningDataModule" in prob.message
    assert "lightning.pytorch.LightningModule" in prob.message
    assert "cannot mix" in prob.message
    assert "lightning.pytorch" in prob.hint


def test_callback_from_the_other_namespace_is_refused(raw: dict[str, Any]) -> None:
    raw["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                         "init_args": {"monitor": "val/loss"}}]
    prob = only_problem(raw)
    assert prob.path == "callbacks[0].class_path"
    assert "cannot mix" in prob.message


def test_data_module_that_is_no_data_module(raw: dict[str, Any]) -> None:
    prob = only_problem(mutate(raw, "data.class_path", "collections.OrderedDict"))
    assert prob.path == "data.class_path"
    assert "is not a pytorch_lightning.LightningDataModule" in prob.message


# ---------------------------------------------------------------- ${env:NAME} references


def test_env_refs_are_kept_in_to_dict_and_resolved_by_resolve_env(raw: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCTL_TEST_SECRET", "s3cr3t")
    monkeypatch.delenv("TRAINCTL_TEST_UNSET", raising=False)
    raw["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.EarlyStopping",
                         "init_args": {"monitor": "${env:TRAINCTL_TEST_SECRET}"}}]
    raw["backend"]["ray"] = {"env_vars": {"TOKEN": "${env:TRAINCTL_TEST_SECRET}",
                                          "OTHER": "x-${env:TRAINCTL_TEST_UNSET}-y"}}
    spec = parse_spec(raw)
    plain = spec.to_dict()
    assert plain["callbacks"][0]["init_args"]["monitor"] == "${env:TRAINCTL_TEST_SECRET}"
    assert plain["backend"]["ray"]["env_vars"]["TOKEN"] == "${env:TRAINCTL_TEST_SECRET}"
    assert "s3cr3t" not in yaml.safe_dump(plain)
    assert sorted(set(env_refs(plain))) == ["TRAINCTL_TEST_SECRET", "TRAINCTL_TEST_UNSET"]
    resolved = resolve_env(plain)
    assert resolved["callbacks"][0]["init_args"]["monitor"] == "s3cr3t"
    assert resolved["backend"]["ray"]["env_vars"] == {"TOKEN": "s3cr3t", "OTHER": "x--y"}
    assert plain["backend"]["ray"]["env_vars"]["TOKEN"] == "${env:TRAINCTL_TEST_SECRET}"  # not modified


def test_resolve_env_on_spec_objects(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker calls resolve_env(spec.model) on Component objects: their init_args must be resolved."""
    monkeypatch.setenv("TRAINCTL_TEST_HIDDEN", "abc")
    raw["model"]["init_args"]["name"] = "${env:TRAINCTL_TEST_HIDDEN}"
    spec = parse_spec(raw, check_classes=False)
    comp = resolve_env(spec.model)
    assert isinstance(comp, Component)
    assert comp.init_args["name"] == "abc"
    assert spec.model.init_args["name"] == "${env:TRAINCTL_TEST_HIDDEN}"
    whole = resolve_env(spec)
    assert whole.resources.accelerator is Accelerator.cpu  # enums stay enums
    assert whole.model.init_args["name"] == "abc"
