"""Every backend has the same shape: a registry line, a submit side (base.Launcher) and an in-job side (InJob)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from trainctl.errors import UserError
from trainctl.injob import InJob
from trainctl.launchers import registry
from trainctl.spec import BackendKind

IN_JOB = {"local": ("LocalInJob", "run_rank"), "slurm": ("SlurmInJob", "run_rank"), "ray": ("RayInJob", None)}


def test_the_registry_names_every_backend_the_spec_accepts() -> None:
    assert [k.value for k in BackendKind] == registry.KINDS
    assert set(IN_JOB) == set(registry.KINDS)


@pytest.mark.parametrize("kind", registry.KINDS)
def test_each_backend_has_both_sides(kind: str) -> None:
    launcher = registry.load(kind).LAUNCHER
    assert launcher.kind == kind and launcher.poll_s > 0
    for method in ("dry_run", "submit", "status", "logs", "cancel", "rendezvous_port"):
        assert callable(getattr(launcher, method)), f"{kind}: {method}"
    injob = importlib.import_module(f"trainctl.launchers.{kind}.injob")
    cls_name, entry = IN_JOB[kind]
    cls = getattr(injob, cls_name)
    for method in ("requeue_self", "cancelled"):
        wanted = list(inspect.signature(getattr(InJob, method)).parameters)
        assert list(inspect.signature(getattr(cls, method)).parameters) == wanted, f"{kind}: {method}"
    if entry:  # submitit's callable: what the launcher submits
        assert callable(getattr(injob, entry))


def test_only_local_fixes_its_port_at_submit() -> None:
    ports = {kind: registry.load(kind).LAUNCHER.rendezvous_port() for kind in registry.KINDS}
    assert ports["slurm"] == 0 and ports["ray"] == 0 and 1024 < ports["local"] < 65536


def test_an_unknown_backend_names_the_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        registry.load("slrum")
    text = str(err.value)
    assert "local, slurm, ray" in text and "slurm" in text
