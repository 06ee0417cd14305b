"""Timing one variant's steps: step-end marks (CUDA events or the host clock), host syncs counted by call site,
the timed window under cProfile; the bf16 peak that MFU divides by."""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def peak_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16.items():
        if key in device_name:
            return peak
    return None


class StepTimer:
    """Step-end marks: CUDA events (no sync) or host times; a sync only at the two ends of the timed window."""

    def __init__(self, cuda: bool, warmup: int, total: int) -> None:
        import torch

        self.torch, self.cuda, self.warmup, self.total = torch, cuda, warmup, total
        self.marks: list[Any] = []
        self.cpu_marks: list[float] = []  # this thread's CPU time at each step end
        self.t0 = self.t1 = None
        self.first_step_s: float | None = None
        self.started = time.perf_counter()
        self.hooks: list[Any] = []  # called as hook(phase) with phase "start" / "stop" of the timed window

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def step_end(self, i: int) -> None:
        self.cpu_marks.append(time.thread_time())
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
        if i == 0:
            self._sync()
            self.first_step_s = time.perf_counter() - self.started
        if i == self.warmup - 1:
            self._sync()
            self.t0 = time.perf_counter()
            for h in self.hooks:
                h("start")
        if i == self.total - 1:
            for h in self.hooks:
                h("stop")
            self._sync()
            self.t1 = time.perf_counter()

    def result(self) -> dict[str, Any]:
        marks = self.marks[self.warmup - 1 : self.total]
        if self.cuda:
            iv = [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(marks)]
        else:
            iv = [b - a for a, b in itertools.pairwise(marks)]
        if not iv or self.t0 is None or self.t1 is None:
            raise RuntimeError(f"only {len(self.marks)} step ends recorded (need {self.total})")
        cpu = self.cpu_marks[self.warmup - 1 : self.total]
        cpu_iv = [b - a for a, b in itertools.pairwise(cpu)]
        return {
            # host CPU of the training thread per step: on a CPU device the whole step; on a GPU the launches,
            # hooks and Python, plus any time spent spinning in a sync
            "host_cpu_ms_per_step": 1e3 * statistics.median(cpu_iv),
            "step_s_median": statistics.median(iv), "step_s_mean": statistics.fmean(iv),
            "step_s_min": min(iv), "step_s_max": max(iv), "wall_step_s": (self.t1 - self.t0) / len(iv),
            "timed_steps": len(iv), "first_step_s": self.first_step_s,
        }


class SyncCounter:
    """Counts host syncs by call site while active. On a GPU: CUDA's own detector
    (`torch.cuda.set_sync_debug_mode("warn")`), which sees every synchronizing call. On a CPU, where nothing
    syncs: every Tensor.item/tolist/bool/float/int, the calls that would sync on a GPU."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, cuda: bool, steps: int) -> None:
        self.cuda, self.steps = cuda, steps
        self.active = False
        self.sites: collections.Counter[str] = collections.Counter()
        self.originals: dict[str, Any] = {}

    @staticmethod
    def _site() -> str:
        import traceback as tb

        frames = tb.extract_stack()[:-3]
        inside = ("site-packages/torch/", "dist-packages/torch/", "bench/flagship/", "/warnings.py")
        keep = [f for f in frames if not any(p in f.filename.replace(os.sep, "/") for p in inside)]
        if not keep:
            return "?"
        f = keep[-1]
        parts = Path(f.filename).parts
        short = "/".join(parts[-3:])
        return f"{short}:{f.lineno} {f.name}"

    def install(self) -> SyncCounter:
        import torch

        for name in () if self.cuda else self.NAMES:
            orig = getattr(torch.Tensor, name)
            self.originals[name] = orig

            def wrapper(t: Any, *a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
                if self.active:
                    self.sites[f"{_name}: {self._site()}"] += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, wrapper)
        if self.cuda:
            import warnings

            def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
                     ) -> None:
                if self.active and "synchroniz" in str(message):
                    self.sites[f"cuda-sync: {self._site()}"] += 1

            warnings.showwarning = show
            warnings.simplefilter("always")
        return self

    def hook(self, phase: str) -> None:
        import torch

        self.active = phase == "start"
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn" if self.active else 0)

    def result(self) -> dict[str, Any]:
        return {"syncs_per_step": sum(self.sites.values()) / max(1, self.steps),
                "sync_sites": {k: v / max(1, self.steps) for k, v in self.sites.most_common(20)}}


def cprofile_hook(args: argparse.Namespace, variant: str) -> Any:
    """A StepTimer hook that runs the timed window under cProfile, timed by this thread's CPU time."""
    if not args.cprofile:
        return None
    import cProfile

    prof = cProfile.Profile(time.thread_time)
    folder = Path(args.cprofile)
    folder.mkdir(parents=True, exist_ok=True)

    def hook(phase: str) -> None:
        if phase == "start":
            prof.enable()
        else:
            prof.disable()
            prof.dump_stats(str(folder / f"{variant}.pstats"))

    return hook
