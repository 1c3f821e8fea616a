"""What online head profiling costs against one sparse attention call on the GPU, whether a
cached call or profiling synchronises with the host, and the block-mass kernel's launch shapes."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import torch

from dit_sparse import SparseAttentionConfig, TokenGrid, profile_heads
from dit_sparse.kernels import block_sparse_attention, block_sparse_attention_reference
from dit_sparse.kernels.block_lse import LseConfig, sampled_block_lse, sampled_block_lse_reference
from dit_sparse.kernels.reorder import reorder_flagged_heads
from dit_sparse.profiling import HeadPlan, make_bank

from .timing import cuda_time, timed_ms, write_gpu_results

SHAPES = {
    "wan480": (1, 12, TokenGrid(21, 30, 52)),  # Wan2.1-1.3B 480x832x81: (1, 12, 32760, 128)
    "hunyuan720": (1, 24, TokenGrid(33, 45, 80)),  # HunyuanVideo 720x1280x129: (1, 24, 118800, 128)
}
TARGET = 0.05


def no_host_sync(fn) -> bool:
    """Whether fn() runs without any CUDA synchronisation with the host."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        ok = True
    except RuntimeError as e:
        ok = "synchroniz" not in str(e).lower()
        if ok:
            raise
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return ok


def added_ms(base, both, reps=40) -> float:
    """Median over interleaved repeats of time(both()) - time(base()): what the extra work in
    `both` adds (two separate medians differ by more than that work's time between runs)."""
    diffs = []
    for _ in range(reps):
        base_ms = timed_ms(base)
        diffs.append(timed_ms(both) - base_ms)
    return statistics.median(diffs)


def kernel_times(events) -> list[tuple[str, float]]:
    """(name, ms) of the device kernels among profiler events, longest first. Operator events
    (aten::*) also carry their kernels' time, and the profiler's own buffer requests are no
    work of ours, so neither is counted."""
    kernels = [(e.key, e.self_device_time_total / 1000.0) for e in events
               if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
               and not e.key.startswith("Activity Buffer")]
    return sorted(kernels, key=lambda kv: -kv[1])


def per_call(fn, calls=4) -> float:
    """Milliseconds per call of `calls` back-to-back calls: the GPU's time, with the host's
    launch work hidden behind the queued calls as in a pipeline."""
    return cuda_time(lambda: [fn() for _ in range(calls)]) / calls


def lse_sweep(q, k, grid, bank):
    """Time the block-mass kernel of profiling over launch shapes, and check the default one."""
    rows = q.index_select(2, bank.sample_rows)
    default = LseConfig()
    records = []
    for per in (1, 2, 4, 8):
        for block_n in (64, 128):
            for stages in (2, 3):
                config = LseConfig(per, block_n, 4, stages)
                ms = per_call(lambda: sampled_block_lse(rows, k, order=grid.order, config=config))
                records.append(dict(config=asdict(config), ms=ms))
    out = sampled_block_lse(rows, k, order=grid.order)
    ref = sampled_block_lse_reference(rows, k, order=grid.order)
    nb = ref.shape[-1]
    return dict(
        default=asdict(default.resolve(nb, 2 * q.shape[0] * q.shape[1])),
        default_ms=per_call(lambda: sampled_block_lse(rows, k, order=grid.order)),
        max_abs_err=float((out - ref).abs().max()),
        sweep=records,
    )


def run_shape(name):
    """One shape's record: bank build, sparse, spatial-only, reorder and profiling times, host
    syncs, the profiling kernels' breakdown and the block-mass kernel's sweep, checked on a slice."""
    B, H, grid = SHAPES[name]
    S, D = grid.num_tokens, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    fixed = SparseAttentionConfig(density=0.2)
    adaptive = SparseAttentionConfig()
    t0 = time.perf_counter()
    bank = make_bank(grid, fixed, "cuda")
    torch.cuda.synchronize()
    bank_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    adaptive_bank = make_bank(grid, adaptive, "cuda")
    torch.cuda.synchronize()
    adaptive_bank_s = time.perf_counter() - t0

    # a mixed plan: even heads spatial, odd heads temporal (random data has no preference)
    spatial_id, temporal_id = (i for i, c in enumerate(bank.candidates) if c.kind in ("spatial", "temporal"))
    mixed = torch.tensor([spatial_id, temporal_id] * (H // 2), device="cuda").expand(B, H)
    plan, spatial_plan = HeadPlan(bank), HeadPlan(bank)
    plan.set_patterns(mixed)
    spatial_plan.set_patterns(torch.full((B, H), spatial_id, device="cuda"))

    sparse_ms = per_call(lambda: plan.attend(q, k, v))
    spatial_ms = per_call(lambda: spatial_plan.attend(q, k, v))
    native_ms = per_call(lambda: block_sparse_attention(
        q, k, v, bank.kv_indices, bank.kv_counts, head_pattern=spatial_plan.patterns, block_size=bank.block_size))
    flags = plan.reordered.to(torch.int8)
    reorder_ms = per_call(lambda: [reorder_flagged_heads(t, grid.order, flags) for t in (q, k, v)])
    profile_ms = cuda_time(lambda: profile_heads(q, k, v, grid, adaptive, bank=adaptive_bank))
    profile_fixed_ms = cuda_time(lambda: profile_heads(q, k, v, grid, fixed, bank=bank))
    two, both = (lambda: (plan.attend(q, k, v), plan.attend(q, k, v)),
                 lambda: (plan.attend(q, k, v), profile_heads(q, k, v, grid, adaptive, bank=adaptive_bank), plan.attend(q, k, v)))
    two(), both()
    added = added_ms(two, both)
    synced = not no_host_sync(lambda: plan.attend(q, k, v))
    profile_synced = not no_host_sync(lambda: profile_heads(q, k, v, grid, adaptive, bank=adaptive_bank))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        profile_heads(q, k, v, grid, adaptive, bank=adaptive_bank)
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="device_time_total", row_limit=12, max_name_column_width=40), flush=True)
    breakdown = kernel_times(events)
    profile_gpu_ms = sum(ms for _, ms in breakdown)
    lse = lse_sweep(q, k, grid, adaptive_bank)
    best = min(lse["sweep"], key=lambda r: r["ms"])
    print(f"{name}: block-mass kernel {lse['default_ms']:.4f} ms with the default {lse['default']}, "
          f"best {best['ms']:.4f} ms with {best['config']}, max err {lse['max_abs_err']:.2e}", flush=True)

    rows = slice(0, 1024)  # correctness on a slice of query rows (full key range)
    out = plan.attend(q, k, v)
    ref = block_sparse_attention_reference(
        q, k, v, bank.kv_indices, bank.kv_counts, head_pattern=mixed, block_size=bank.block_size,
        order=grid.order, reordered_heads=plan.reordered,
    ) if S < 40000 else None
    err = float((out[:, :, rows].float() - ref[:, :, rows].float()).abs().max()) if ref is not None else None
    record = dict(
        shape=[B, H, S, D], grid=[grid.frames, grid.height, grid.width], sampled_rows=adaptive.num_sampled_queries,
        candidates=len(adaptive_bank.candidates), sparse_ms=sparse_ms, spatial_only_ms=spatial_ms,
        spatial_unflagged_ms=native_ms, reorder_ms=reorder_ms, reorder_fraction=reorder_ms / sparse_ms, profile_ms=profile_ms, profile_fixed_ms=profile_fixed_ms,
        profile_gpu_ms=profile_gpu_ms, gpu_fraction=profile_gpu_ms / sparse_ms, added_ms=added, profile_fraction=profile_ms / sparse_ms,
        added_fraction=added / sparse_ms, bank_build_s=bank_s, adaptive_bank_build_s=adaptive_bank_s,
        cached_call_syncs=synced, profile_syncs=profile_synced, max_abs_err=err, density=plan.mean_density,
        profile_gpu_breakdown=breakdown, block_mass_kernel=lse,
    )
    print(f"{name}: " + ", ".join(f"{k_}={v_:.4g}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in record.items()), flush=True)
    del q, k, v
    torch.cuda.empty_cache()
    return record


def markdown(records, command, device):
    lines = [
        f"# Head profiling cost on {device}", "", f"Command: `{command}`", "",
        "sparse = one attention call under a cached plan (density 0.2, half the heads temporal, so it "
        "includes their reordering pass); profile = `profile_heads` alone with the adaptive ladder "
        f"({records[0]['candidates']} candidates, {records[0]['sampled_rows']} sampled rows) on an idle GPU, so it "
        "includes the launch latency of its small ops; added = time of (sparse, profile, sparse) minus "
        "(sparse, sparse), the median of 40 interleaved pairs: what profiling adds when the GPU has work queued, as in a pipeline. "
        f"Target: profiling <= {TARGET:.0%} of one sparse call, and no host sync in a cached call "
        "(profiling does not sync either: the plan stays on the device). "
        "The bank (candidate templates of a grid) is built once per grid. bf16.", "",
        "profile GPU = the summed kernel time of one `profile_heads` call (torch.profiler; device kernels only).", "",
        "spatial-only = every head spatial, through the same call (temporal flags all off); "
        "unflagged = the same without `order=` (a kernel compiled without the flag check). "
        "reorder = the position-major pass over the temporal heads of q, k, v alone.", "",
        "block-mass kernel = the one launch of profiling that reads K (both layouts), with its "
        "default launch shape; best = the fastest of the launch shapes swept in the same run "
        "(key blocks per program, key tile, pipeline stages; in the JSON).", "",
        "| shape | sparse ms | spatial-only ms | unflagged ms | reorder ms | reorder / sparse | profile alone ms | profile (fixed) ms | profile GPU ms | GPU / sparse | added ms | added / sparse | block-mass kernel ms | best swept ms | cached call syncs | profiling syncs | bank build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['shape']} | {r['sparse_ms']:.3f} | {r['spatial_only_ms']:.3f} | {r['spatial_unflagged_ms']:.3f} | "
            f"{r['reorder_ms']:.3f} | {r['reorder_fraction']:.1%} | "
            f"{r['profile_ms']:.3f} | {r['profile_fixed_ms']:.3f} | {r['profile_gpu_ms']:.3f} | {r['gpu_fraction']:.1%} | "
            f"{r['added_ms']:.3f} | {r['added_fraction']:.1%} | "
            f"{r['block_mass_kernel']['default_ms']:.3f} | {min(x['ms'] for x in r['block_mass_kernel']['sweep']):.3f} | "
            f"{'yes' if r['cached_call_syncs'] else 'no'} | {'yes' if r['profile_syncs'] else 'no'} | "
            f"{r['adaptive_bank_build_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run(names: list[str], out, command: str) -> str:
    """Measure each shape, write out/profiling_<gpu>.json and .md; returns the Markdown."""
    records = [run_shape(n) for n in names]
    device = torch.cuda.get_device_name()
    md = markdown(records, command, device)
    write_gpu_results(out, "profiling", device, dict(device=device, command=command, records=records), md)
    return md
