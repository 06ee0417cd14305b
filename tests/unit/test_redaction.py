"""Secrets never reach MLflow (tracking.py): the spec's params and spec.yaml are masked by path and by key name,
free text (reasons, errors) loses the values of secret-looking environment variables."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trainctl.spec import parse_spec
from trainctl.tracking import REDACTED, flatten, redact_spec, redact_text


def test_listed_paths_and_secret_looking_keys_are_masked_at_any_depth() -> None:
    spec = {
        "backend": {"slurm": {"account": "proj-42", "partition": "gpu"}},
        "model": {"init_args": {"lr": 0.1, "hub": {"api_key": "k-123", "Private-Key": "pk", "name": "m"}}},
        "callbacks": [{"init_args": {"wandb_token": "t-1", "every": 5}}, {"init_args": {"url": "u"}}],
        "data": {"init_args": {"credentials": {"user": "a", "pass": "b"}}},
    }
    before = copy.deepcopy(spec)
    out = redact_spec(spec, ["backend.slurm.account", "callbacks.1.init_args.url"])
    assert spec == before, "the spec itself is left as it was"
    assert out["backend"]["slurm"] == {"account": REDACTED, "partition": "gpu"}
    assert out["model"]["init_args"] == {"lr": 0.1, "hub": {"api_key": REDACTED, "Private-Key": REDACTED, "name": "m"}}
    assert out["callbacks"] == [{"init_args": {"wandb_token": REDACTED, "every": 5}}, {"init_args": {"url": REDACTED}}]
    assert out["data"]["init_args"]["credentials"] == REDACTED, "a secret-named key masks its whole subtree"


def test_a_path_masks_only_itself() -> None:
    out = redact_spec({"a": {"b": 1, "bb": 2}, "ab": 3}, ["a.b"])
    assert out == {"a": {"b": REDACTED, "bb": 2}, "ab": 3}


def test_the_runs_params_hold_no_secret(raw: dict[str, Any]) -> None:
    """What submit logs as params: the flattened, redacted resolved spec of a real example."""
    raw["tracking"]["redact"] = ["model.init_args.lr"]
    raw["data"]["init_args"]["batch_size"] = 32
    spec = parse_spec(raw, "job.yaml", check_classes=False)
    params = flatten(redact_spec(spec.to_dict(), spec.tracking.redact))
    assert params["model.init_args.lr"] == REDACTED
    assert params["data.init_args.batch_size"] == 32 and params["name"] == spec.name
    assert sum(v == REDACTED for v in params.values()) == 1, "nothing else of the example looks secret"


def test_free_text_loses_secret_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "tok-9f8e7d")
    monkeypatch.setenv("DB_PASSWORD", "hunter22")
    monkeypatch.setenv("SHORT_SECRET", "abc")  # too short to replace safely inside words
    monkeypatch.setenv("DATA_DIR", "/data/tok")  # not a secret's name
    text = "login with tok-9f8e7d failed (password hunter22) at /data/tok; abc"
    assert redact_text(text) == f"login with {REDACTED} failed (password {REDACTED}) at /data/tok; abc"
