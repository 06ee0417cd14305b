"""The spec's classes read from source (`validate`, no import) and imported (`submit`) give the same problems."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from trainctl import static_sig
from trainctl.class_checks import FromSource, Imported, check_components, check_with
from trainctl.signature import Unresolved
from trainctl.spec import parse_spec

from . import static_models
from .spec_helpers import DIGITS, NM, ROOT

SM = static_models.__name__


def model(cls: str, **init_args: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["model"] = {"class_path": f"{SM}.{cls}", "init_args": init_args}
        raw["data"] = None
    return change


def edit(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    return change


def both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        for c in changes:
            c(raw)
    return change


SETTLED = {  # the source alone answers these
    "digits": both(),
    "wrong-type": edit("model.init_args.hidden", "wide"),
    "unknown-arg": edit("model.init_args.hiden", 3),
    "null": edit("model.init_args.hidden", None),
    "trainer-type": edit("trainer.max_epochs", "ten"),
    "trainer-literal": edit("trainer.deterministic", "sometimes"),
    "trainer-literal-ok": edit("trainer.deterministic", "warn"),
    "trainer-unknown": edit("trainer.max_epochz", 3),
    "trainer-owned": edit("trainer.devices", 4),
    "data-type": edit("data.init_args.batch_size", "big"),
    "mixin-required": model("Mixed"),
    "mixin-bad": model("Mixed", width=2, mode="slow", scale="x", tags=[1], name=3, more=1),
    "mixin-good": model("Mixed", width=2, mode="exact", scale=None, tags=["a"], name="n"),
    "inherited-init": model("Child", width="w"),
    "typing-union": model("Strict", depth=[1], ratio="half", flag="yes"),
    "lightning-init": model("NoInit", anything=1),
    "not-lightning": model("NotLightning", width=1),
    "other-namespace-data": edit("data", {"class_path": f"{SM}.NewData", "init_args": {"batch_size": 2}}),
    "relative-base": both(model("NoInit"), edit("data", {"class_path": f"{SM}.Data"})),
    "same-namespace-data": both(model("NoInit"), edit("data", {"class_path": f"{SM}.NewData",
                                                                "init_args": {"batch_size": "x"}})),
    "no-data-no-loaders": model("NoLoaders"),
    "loaders-from-mixin": model("LoadersFirst"),
    "loaders-behind-lightning": model("LoadersLast"),
    "data-without-loaders": both(model("NoLoaders"), edit("data", {"class_path": f"{SM}.EmptyData"})),
    "loaders-in-data": both(model("NoLoaders"), edit("data", {"class_path": "trainctl.examples.digits."
                                                                           "DigitsDataModule"})),
}
VALID = {"digits", "mixin-good", "trainer-literal-ok", "lightning-init", "loaders-from-mixin", "loaders-in-data"}
IMPORTED = {  # these need the import: the source reader hands them over
    "nested-class": model("WithLayer", layer={"class_path": "torch.nn.Linear", "init_args": {"in_features": 2}}),
    "library-type": model("WithLayer", layer=None),
    "decorated-init": model("Decorated", x=1),
    "missing-class": edit("model.class_path", "trainctl.examples.digits.Nope"),
    "library-callback": edit("callbacks", [{"class_path": "pytorch_lightning.callbacks.EarlyStopping",
                                            "init_args": {"monitor": "val/loss", "patience": "long"}}]),
    "nested-models": edit("model", {"class_path": f"{NM}.WithEncoder", "init_args": {"encoder": None}}),
}


def spec_of(raw: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> Any:
    out = copy.deepcopy(raw)
    change(out)
    return parse_spec(out, check_classes=False)


@pytest.mark.parametrize("case", sorted(SETTLED))
def test_source_and_import_agree(raw: dict[str, Any], case: str) -> None:
    spec = spec_of(raw, SETTLED[case])
    from_source = check_with(FromSource(), spec)  # raises Unresolved if the source did not settle it
    assert from_source == check_with(Imported(), spec)
    assert bool(from_source) == (case not in VALID), [p.render() for p in from_source]


@pytest.mark.parametrize("case", sorted(IMPORTED))
def test_what_the_source_cannot_settle_is_imported(raw: dict[str, Any], case: str) -> None:
    spec = spec_of(raw, IMPORTED[case])
    with pytest.raises(Unresolved):
        check_with(FromSource(), spec)
    assert check_components(spec, from_source=True) == check_with(Imported(), spec)


def test_static_reader_resolves_annotations_as_typing_does() -> None:
    import typing

    mixed = static_sig.read_class(f"{SM}.Mixed")
    assert mixed.signature.owner == f"{SM}.Mixed"
    assert mixed.lightning == {("pytorch_lightning", "LightningModule")}
    hints = typing.get_type_hints(static_models.Code.__init__)
    for name in ("width", "mode", "scale", "tags", "name"):
        assert mixed.signature.annotation(name) == hints[name], name
    assert mixed.signature.var_kw
    assert mixed.signature.params["name"].default == "m"


def test_validate_imports_neither_torch_nor_lightning() -> None:
    code = ("import sys; from trainctl.spec import load_spec; load_spec(sys.argv[1], from_source=True); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pytorch_lightning', 'lightning'}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code, str(DIGITS)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_validate_reads_a_module_next_to_the_spec(tmp_path: Any) -> None:
    """The user's module beside the spec is found from source as the import would find it; problems as usual."""
    (tmp_path / "mymodel.py").write_text(
        "import pytorch_lightning as pl\n\n\n"
        "class Net(pl.LightningModule):\n"
        "    def __init__(self, width: int = 4, act: 'str | None' = None) -> None:\n"
        "        super().__init__()\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: mine\nmodel:\n  class_path: mymodel.Net\n  init_args: {{width: wide, akt: relu}}\n"
                   f"workdir: {tmp_path / 'runs'}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "trainctl.cli", "validate", str(job)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert "model.init_args.width: expected int, got 'wide'" in res.stderr
    assert "model.init_args.akt: Net has no argument 'akt'" in res.stderr and "did you mean 'act'?" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(("source", "settled"), [
    ("import pytorch_lightning as pl\nclass M(pl.LightningModule):\n    def __init__(self, n: int = 1): ...\n", True),
    ("from typing import TYPE_CHECKING\nimport pytorch_lightning as pl\nif TYPE_CHECKING:\n    Width = int\n"
     "class M(pl.LightningModule):\n    def __init__(self, n: 'Width' = 1): ...\n", False),
    ("import pytorch_lightning as pl\ndef make(): ...\nclass M(pl.LightningModule):\n    __init__ = make\n", False),
    ("import pytorch_lightning as pl\nfrom dataclasses import dataclass\n@dataclass\nclass M(pl.LightningModule):\n"
     "    n: int = 1\n", False),
    ("import pytorch_lightning as pl\nclass M(pl.LightningModule, metaclass=type):\n    pass\n", False),
    ("from pytorch_lightning import *\nclass M(LightningModule):\n    pass\n", False),
    ("import pytorch_lightning as pl\nclass M(pl.callbacks.EarlyStopping):\n    pass\n", False),
], ids=["plain", "type-checking-alias", "init-assigned", "dataclass", "metaclass", "star-import", "library-base"])
def test_source_reader_hands_over_what_it_cannot_know(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, source: str,
                                                      settled: bool) -> None:
    name = f"srcmod_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    if settled:
        assert static_sig.read_class(f"{name}.M").signature.params["n"].annotation is int
    else:
        with pytest.raises(Unresolved):
            static_sig.read_class(f"{name}.M")


def test_no_training_data_is_refused_before_the_job_runs(tmp_path: Any) -> None:
    """A module without train_dataloader and a spec without `data:`: validate (from source) and submit (imported)
    refuse it with exit 2, naming the field and both remedies; nothing is created."""
    (tmp_path / "nodata.py").write_text(
        "import pytorch_lightning as pl\n\n\n"
        "class Net(pl.LightningModule):\n"
        "    def training_step(self, batch, batch_idx): ...\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: nodata\nmodel:\n  class_path: nodata.Net\nworkdir: {tmp_path / 'runs'}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for command in (["validate"], ["submit", "--detach"]):
        res = subprocess.run([sys.executable, "-m", "trainctl.cli", *command, str(job)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "data: is missing, and nodata.Net defines no train_dataloader" in res.stderr, res.stderr
        assert "HINT: add `data:` with the class_path of a LightningDataModule" in res.stderr
        assert "define train_dataloader() in nodata.Net" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()
