"""Lean hook dispatch: Lightning's per-step hook calls without the work that does nothing.

For every hook of every step, Lightning calls each callback's method, including the base class's empty one,
and wraps each call in `trainer.profiler.profile(f"[Callback]{callback.state_key}.{hook}")` — building the
state key (ModelCheckpoint's formats its settings) and a context manager even when the profiler is the
do-nothing PassThroughProfiler. With trainctl's callbacks that is ≈ 120 such wrappers a step: on the tiny CPU
benchmark about a fifth of what the Trainer adds to a raw DDP loop (bench/results.md).

`install(ns)` (called by worker/speedups.py on a tested Lightning version) replaces the dispatch functions of the
user's Lightning namespace in this worker process only, and only changes anything while the trainer's profiler is
PassThroughProfiler (a user who sets `trainer.profiler` gets Lightning's own dispatch, timers included). The
callbacks that run, their order, their arguments and `pl_module._current_fx_name` while they run are Lightning's;
a callback whose class (or instance) does not override a hook is not called for it, which is what calling the
base's empty method did.
"""

from __future__ import annotations

import importlib
from typing import Any

CACHE_LIMIT = 256  # distinct (hook, callback list) pairs kept; one Trainer needs ≈ 40


def overrides(callback: Any, hook_name: str, base: type) -> bool:
    """Does calling `callback.<hook_name>` do anything beyond the base Callback's empty method?"""
    if hook_name in vars(callback):
        return True
    return getattr(type(callback), hook_name, None) is not getattr(base, hook_name, None)


def install(ns: Any) -> None:
    call = importlib.import_module(f"{ns.name}.trainer.call")
    if getattr(call._call_callback_hooks, "trainctl_lean", False):
        return
    passthrough = importlib.import_module(f"{ns.name}.profilers").PassThroughProfiler
    base = ns.pl.Callback
    lightning_callbacks = call._call_callback_hooks
    lightning_module_hook = call._call_lightning_module_hook
    # (hook, ids of the callbacks) → (the callbacks themselves, so those ids stay theirs; the ones to call)
    cache: dict[tuple[str, tuple[int, ...]], tuple[tuple[Any, ...], list[Any]]] = {}

    def callback_hooks(trainer: Any, hook_name: str, *args: Any, monitoring_callbacks: bool | None = None,
                       **kwargs: Any) -> None:
        if monitoring_callbacks is not None or type(trainer.profiler) is not passthrough:
            lightning_callbacks(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)
            return
        callbacks = trainer.callbacks
        key = (hook_name, tuple(map(id, callbacks)))
        entry = cache.get(key)
        if entry is None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            entry = cache[key] = (tuple(callbacks), [cb for cb in callbacks if overrides(cb, hook_name, base)])
        if not entry[1]:
            return
        pl_module = trainer.lightning_module
        if pl_module:
            previous = pl_module._current_fx_name
            pl_module._current_fx_name = hook_name
        for callback in entry[1]:
            getattr(callback, hook_name)(trainer, pl_module, *args, **kwargs)
        if pl_module:
            pl_module._current_fx_name = previous

    def module_hook(trainer: Any, hook_name: str, *args: Any, pl_module: Any = None, **kwargs: Any) -> Any:
        if type(trainer.profiler) is not passthrough:
            return lightning_module_hook(trainer, hook_name, *args, pl_module=pl_module, **kwargs)
        pl_module = pl_module or trainer.lightning_module
        if pl_module is None:
            raise TypeError("No `LightningModule` is available to call hooks on.")
        fn = getattr(pl_module, hook_name)
        if not callable(fn):
            return None
        previous = pl_module._current_fx_name
        pl_module._current_fx_name = hook_name
        output = fn(*args, **kwargs)
        pl_module._current_fx_name = previous
        return output

    callback_hooks.trainctl_lean = True  # type: ignore[attr-defined]
    call._call_callback_hooks = callback_hooks
    call._call_lightning_module_hook = module_hook
