"""Fixtures of the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from .spec_helpers import digits_raw


@pytest.fixture
def raw() -> dict[str, Any]:
    """The example spec jobs/digits.yaml as parsed YAML: each test mutates its own copy."""
    return digits_raw()
