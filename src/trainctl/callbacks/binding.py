"""Bind one implementation to either Lightning namespace.

`pytorch_lightning.Callback` and `lightning.pytorch.Callback` are different classes and a Trainer accepts only
its own, so each trainctl callback is written once as a mixin and bound to the user's namespace at build time.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def bind(impl: type, base: type) -> type:
    """A class that is `impl` and also a subclass of `base` (e.g. ns.pl.Callback)."""
    return type(impl.__name__, (impl, base), {"__module__": impl.__module__, "__qualname__": impl.__qualname__})


def make(impl: type, base: type, *args: Any, **kwargs: Any) -> Any:
    return bind(impl, base)(*args, **kwargs)
