"""GPU timing for the benchmarks: CUDA events, warm-up, median of repeats."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch


def timed_ms(fn) -> float:
    """Milliseconds of one `fn()` call on the GPU (CUDA events); waits for it to finish."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def cuda_time(fn, reps=None, budget_ms=1500.0) -> float:
    """Median milliseconds of `fn()` over CUDA-event timings after one warm-up call; without
    `reps`, as many repeats (5 to 50) as fit in `budget_ms`."""
    fn()
    torch.cuda.synchronize()
    first = timed_ms(fn)
    reps = reps or max(5, min(50, int(budget_ms / max(first, 1e-3))))
    return statistics.median(timed_ms(fn) for _ in range(reps))


def write_gpu_results(out, prefix: str, device: str, data: dict, markdown: str) -> Path:
    """Write `<prefix>_<gpu tag>.json` (data) and `.md` (markdown) into `out`, made if missing;
    returns the .md path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}_{gpu_tag(device)}"
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text(markdown)
    return out / f"{stem}.md"


def gpu_tag(device_name: str) -> str:
    """Short lower-case name of a GPU for result file names, so that runs on different GPUs
    never share a table: the first word with a digit, after the vendor ("NVIDIA H100 80GB HBM3"
    -> "h100", "NVIDIA H200" -> "h200", "NVIDIA GeForce RTX 4090" -> "4090")."""
    words = device_name.lower().replace("nvidia", " ").split()
    if not words:
        raise ValueError(f"no GPU name in {device_name!r}")
    word = next((w for w in words if any(c.isdigit() for c in w)), words[0])
    return "".join(c if c.isalnum() else "_" for c in word)
