"""The README's spec field table is generated from the spec's dataclasses and must be current."""

from __future__ import annotations

import dataclasses

import pytest

from trainctl import spec_doc
from trainctl.spec_types import Resources, Spec

from .spec_helpers import ROOT


def test_readme_field_table_is_current() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert spec_doc.rewrite(text) == text, "run `make readme-fields` (python -m trainctl.spec_doc --write README.md)"


def test_every_leaf_field_has_a_row_with_its_default_and_range() -> None:
    rows = {r[0].strip("`"): r for r in spec_doc.rows()}
    assert rows["resources.nodes"][1:3] == ("an integer (1…1024)", "`1`")
    assert rows["name"][2] == "**required**" and rows["data"][2] == "—"
    assert rows["resources.accelerator"][1] == "cpu / gpu / auto"
    assert rows["checkpoint.save_last"][2] == "`true`"
    assert "model.class_path" not in rows  # a class_path object is one field
    assert all(f"resources.{f.name}" in rows for f in dataclasses.fields(Resources))
    assert {k.split(".")[0] for k in rows} == {f.name for f in dataclasses.fields(Spec)}


def test_rewrite_replaces_only_the_marked_section() -> None:
    text = f"intro\n{spec_doc.BEGIN}\n| stale |\n{spec_doc.END}\noutro\n"
    out = spec_doc.rewrite(text)
    assert out.startswith(f"intro\n{spec_doc.BEGIN}\n| field | type |") and out.endswith(f"{spec_doc.END}\noutro\n")
    assert "stale" not in out and spec_doc.rewrite(out) == out
    with pytest.raises(ValueError, match="markers"):
        spec_doc.rewrite("no markers here")
