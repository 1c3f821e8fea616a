"""Timing for the benchmarks: CUDA events, warm-up, median of repeats on the GPU; wall time
between synchronisations for whole steps, on the GPU or the CPU."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch


def sync(device: torch.device):
    """Wait for the work queued on `device` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_seconds(fn, device: torch.device) -> float:
    """Seconds of one `fn()` call from a synchronised start to a synchronised end: the time a
    whole step takes, host work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_wall_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median of `repeats` `wall_seconds(fn, device)`."""
    return statistics.median(wall_seconds(fn, device) for _ in range(repeats))


def op_seconds(fn, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of `fn()` alone after a warm-up call: CUDA events on the GPU
    (`cuda_time`), `repeats` wall times on the CPU."""
    if device.type == "cuda":
        return cuda_time(fn) / 1000.0
    fn()
    return median_wall_seconds(fn, device, repeats)


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


def stream_time(fn, budget_ms=1500.0, batch_ms=20.0) -> float:
    """Median milliseconds per call of `fn()` with calls run back to back, timed in batches of
    about `batch_ms` between two CUDA events. The host queues each call while the GPU runs the
    one before, as it does in a model's forward, so this is the GPU's time per call; `cuda_time`
    instead waits for the GPU before each call and so adds the host's launch work to calls
    shorter than it (see `host_time_us`)."""
    fn()
    torch.cuda.synchronize()
    first = timed_ms(fn)
    calls = max(1, min(1000, int(batch_ms / max(first, 1e-3))))
    batches = max(5, min(50, int(budget_ms / max(first * calls, 1e-3))))
    per_call = []
    for _ in range(batches):
        per_call.append(timed_ms(lambda: [fn() for _ in range(calls)]) / calls)
    return statistics.median(per_call)


def host_time_us(fn, calls=100) -> float:
    """Microseconds the host takes to issue one `fn()` call (Python, argument checks, kernel
    launches) while the GPU works through the queue; a call on an idle GPU takes at least this."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


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
