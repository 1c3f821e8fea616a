"""GPU timing for the benchmarks: CUDA events, warm-up, median of repeats."""

from __future__ import annotations

import statistics

import torch


def cuda_time(fn, reps=None, budget_ms=1500.0) -> float:
    """Median milliseconds of `fn()` over CUDA-event timings after one warm-up call; without
    `reps`, as many repeats (5 to 50) as fit in `budget_ms`."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    first = start.elapsed_time(end)
    reps = reps or max(5, min(50, int(budget_ms / max(first, 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gpu_tag(device_name: str) -> str:
    """Short lower-case name of a GPU for result file names, so that runs on different GPUs
    never share a table: the first word with a digit, after the vendor ("NVIDIA H100 80GB HBM3"
    -> "h100", "NVIDIA H200" -> "h200", "NVIDIA GeForce RTX 4090" -> "4090")."""
    words = device_name.lower().replace("nvidia", " ").split()
    if not words:
        raise ValueError(f"no GPU name in {device_name!r}")
    word = next((w for w in words if any(c.isdigit() for c in w)), words[0])
    return "".join(c if c.isalnum() else "_" for c in word)
