"""Where a step's GPU time goes: torch.profiler's kernel time by category."""

from __future__ import annotations

from collections import Counter

import torch

from .timing import sync, wall_seconds


TRACE_CATEGORIES = (  # (category, substrings of kernel names), first match wins
    ("sparse attention (ours)", ("_bsa_fwd",)),
    ("reorder (ours)", ("_reorder_kernel",)),
    ("profiling (ours)", ("_block_lse",)),
    ("dense attention (SDPA)", ("cudnn", "fmha", "flash", "attention")),
    ("GEMM", ("gemm", "xmma", "cutlass", "cublas", "sm90_", "nvjet", "triton_tem")),
    ("fused by Inductor", ("triton_poi", "triton_red", "triton_per")),
)


def kernel_category(name: str) -> str:
    """The TRACE_CATEGORIES entry a CUDA kernel's name falls in, else "other"."""
    name = name.lower()
    return next((c for c, keys in TRACE_CATEGORIES if any(k.lower() in name for k in keys)), "other")


def trace_step(fn, device) -> dict:
    """One step under torch.profiler: kernel time per category, the busiest kernels, and the
    GPU's busy time against the wall time (the gap is launch latency and host work)."""
    sync(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall = wall_seconds(fn, device)
    kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    by_category = Counter()
    for e in kernels:
        by_category[kernel_category(e.key)] += e.self_device_time_total / 1e6
    busy = sum(by_category.values())
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]
    return dict(
        wall_s=wall, gpu_busy_s=busy, categories_s=dict(by_category.most_common()),
        top_kernels=[dict(name=e.key[:90], calls=e.count, s=e.self_device_time_total / 1e6) for e in top],
    )
