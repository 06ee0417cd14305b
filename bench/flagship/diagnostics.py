"""Diagnostic variants: the raw loop under torch.profiler (device time by kernel family) and an SDPA backend probe
at the flagship's shape (with the card's GEMM rates)."""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path
from typing import Any

from bench.flagship.variants import raw_loop


def run_profile(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The raw loop under torch.profiler for a few steps: GPU (or CPU) time per step by kernel family."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device == "cuda"
    model, step = raw_loop(args, spec)
    n_prof = 3
    for _ in range(max(2, args.warmup)):
        step()
    if cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n_prof):
            step()
        if cuda:
            torch.cuda.synchronize()
    families: collections.Counter[str] = collections.Counter()
    kernels: collections.Counter[str] = collections.Counter()
    for ev in prof.key_averages():
        t_us = getattr(ev, "self_device_time_total", None) if cuda else ev.self_cpu_time_total
        if cuda and t_us is None:
            t_us = getattr(ev, "self_cuda_time_total", 0)
        if not t_us or (cuda and ev.device_type != torch.autograd.DeviceType.CUDA):
            continue
        if "#" in ev.key or ev.key.startswith(("Optimizer.", "ProfilerStep")):  # GPU-track annotations, not kernels
            continue
        families[_family(ev.key)] += t_us / 1e3 / n_prof
        kernels[ev.key[:110]] += t_us / 1e3 / n_prof
    table = ""
    for key in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
            break
        except Exception as exc:  # sort keys were renamed across PyTorch versions
            table = f"table by {key} failed: {exc}"
    if args.profile_table:
        Path(args.profile_table).write_text(table)
    return {"device_ms_per_step_by_family": dict(families.most_common()),
            "device_ms_per_step_total": sum(families.values()),
            "top_kernels_ms_per_step": dict(kernels.most_common(25)), "fpt": model.flops_per_token}


def _family(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "cudnn", "attention", "sdpa", "_attn")):
        return "attention"
    if any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "aten::mm", "addmm", "bmm")):
        return "matmul"
    if "adam" in n:
        return "optimizer"
    if "lpnorm" in n or "norm_kernel" in n:
        return "grad norm (foreach)"
    if "multi_tensor" in n:
        return "foreach (other)"
    if "nccl" in n:
        return "nccl"
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset"
    if n.startswith(("triton_per_", "triton_red_")):
        return "triton reductions (layernorm, softmax/CE, ...)"
    if n.startswith("triton_poi_"):
        return "triton pointwise"
    if "triton" in n:
        return "triton (other)"
    if any(s in n for s in ("embedding", "index", "scatter", "sort", "radix", "segment", "partials")):
        return "embedding / index"
    if "elementwise" in n or "reduce_kernel" in n:
        return "aten elementwise/reduce"
    return "other"


def run_probe_attention(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """Forward+backward of causal SDPA per backend at the flagship's shape; picks the fastest that matches flash."""
    import torch


    h = spec.model.init_args
    b = args.batch or spec.data.init_args.get("batch_size", 16)
    n_head, n_embd, t = h.get("n_head", 12), h.get("n_embd", 768), h.get("block_size", 1024)
    device = "cuda" if args.device == "cuda" else "cpu"
    dtype = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, n_head, t, n_embd // n_head, device=device, dtype=dtype, generator=g,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn(b, n_head, t, n_embd // n_head, device=device, dtype=dtype, generator=g)
    results: dict[str, Any] = {}
    ref = ref_grad = None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for name in ("flash", "cudnn", "efficient"):
        try:
            with sdpa_kernel([backends[name]]):  # this kernel only: an unsupported one fails, not falls back

                def fb() -> torch.Tensor:
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    out.backward(grad)
                    return out

                q.grad = k.grad = v.grad = None
                out = fb().float().detach()
                qg = q.grad.float().clone()
                for _ in range(3):
                    fb()
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                reps = 20
                for _ in range(reps):
                    fb()
                if device == "cuda":
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / reps * 1e3
            if ref is None:
                ref, ref_grad = out, qg
            err = float((out - ref).norm() / ref.norm())
            gerr = float((qg - ref_grad).norm() / ref_grad.norm())
            results[name] = {"fwd_bwd_ms": ms, "rel_err_vs_flash": err, "grad_rel_err_vs_flash": gerr,
                             "ok": bool(err < 2e-2 and gerr < 5e-2 and torch.isfinite(qg).all())}
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300], "ok": False}
    if device == "cuda":  # what the card's matrix units give at the model's own GEMM shapes (bf16)
        m = b * t
        shapes = {"8192^3": (8192, 8192, 8192), "qkv": (m, n_embd, 3 * n_embd), "fc": (m, n_embd, 4 * n_embd),
                  "out": (m, 4 * n_embd, n_embd), "head": (m, n_embd, h.get("vocab_size", 50304))}
        rates = {}
        for key, (mm, kk, nn) in shapes.items():
            a_ = torch.randn(mm, kk, device=device, dtype=dtype, generator=g)
            b_ = torch.randn(kk, nn, device=device, dtype=dtype, generator=g)
            for _ in range(3):
                a_ @ b_
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                a_ @ b_
            torch.cuda.synchronize()
            rates[key] = 2 * mm * kk * nn * 10 / (time.perf_counter() - t0) / 1e12
            del a_, b_
        results["gemm_tflops"] = rates
    ok = {n: r["fwd_bwd_ms"] for n, r in results.items() if r.get("ok") and n in ("flash", "cudnn")}
    results["choice"] = min(ok, key=ok.get) if ok else "auto"
    return results
