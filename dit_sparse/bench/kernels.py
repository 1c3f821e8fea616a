"""Block-sparse attention kernel benchmark on a CUDA GPU.

For each shape and block pattern (random, spatial band, temporal band read through the
position-major index map, dense) and density, times our Triton kernel, cuDNN dense SDPA and
compiled FlexAttention on the identical block mask, checks our output against SDPA with the same
mask on a slice of query rows, and measures the explicit token reorder against the sparse call.

    dit-sparse bench --shapes wan480,wan720 --out docs/results
    python scripts/bench_kernels.py --sweep --shapes wan480          # tile/pipeline configs
    python scripts/bench_kernels.py --phase --shapes wan720,hunyuan720  # key lists phased or not
    python scripts/bench_kernels.py --quantized --shapes wan480,wan720,hunyuan720  # int8 / fp8 kernel

Writes kernels_<gpu>.json (a list of records; e.g. kernels_h100) and kernels_<gpu>.md, merging with records of
other shapes already there, so one GPU run per shape group builds up the whole table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dit_sparse.bench_options import add_arguments
from dit_sparse.kernels import (
    KernelConfig,
    TokenOrder,
    block_sparse_attention,
    block_sparse_attention_reference,
    default_config,
    reorder_tokens,
)
from dit_sparse.patterns import block_tables as tables

from .timing import gpu_tag, host_time_us, stream_time

BLOCK = 128
# name: (B, H, S, D, TokenOrder) -- the video geometry the spatial/temporal bands follow
SHAPES = {
    "wan480": (1, 12, 32760, 128, TokenOrder(21, 1560)),  # Wan2.1-1.3B 480x832x81
    "wan720": (1, 12, 75600, 128, TokenOrder(21, 3600)),  # Wan 720x1280x81
    "hunyuan720": (1, 24, 118800, 128, TokenOrder(33, 3600)),  # HunyuanVideo 720x1280x129
    "cogvideox": (2, 48, 17776, 64, TokenOrder(13, 1350, 226, "prefix")),  # CogVideoX-5B, CFG batch
}
DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5)
SWEEP = [
    KernelConfig(128, 64, 4, 3, tma=False), KernelConfig(128, 64, 4, 2, tma=False),
    KernelConfig(128, 64, 4, 3, tma=False, tail_branch=True),
    KernelConfig(128, 64, 4, 3), KernelConfig(128, 64, 4, 2), KernelConfig(128, 64, 4, 4),
    KernelConfig(128, 64, 4, 3, tail_branch=True), KernelConfig(128, 64, 4, 2, tail_branch=True),
    KernelConfig(128, 32, 4, 3), KernelConfig(128, 128, 8, 3), KernelConfig(128, 128, 8, 2, tail_branch=True),
    KernelConfig(128, 64, 8, 2),
]


def text_blocks(order: TokenOrder, nb: int) -> torch.Tensor:
    """Blocks holding any text token: every query sees them, their queries see everything."""
    is_text = torch.zeros(nb, dtype=torch.bool)
    if order.text_len:
        s = order.num_tokens
        lo, hi = (0, order.text_len) if order.text_position == "prefix" else (s - order.text_len, s)
        is_text[lo // BLOCK : math.ceil(hi / BLOCK)] = True
    return is_text


def band_mask(nb: int, density: float, is_text: torch.Tensor) -> torch.Tensor:
    """(nb, nb) block mask: a diagonal band sized to `density`, plus the text rows and columns."""
    i = torch.arange(nb)
    dist = (i[:, None] - i[None, :]).abs()
    mask = None
    for radius in range(nb):
        mask = (dist <= radius) | is_text[None, :] | is_text[:, None]
        if mask.float().mean() >= density:
            break
    return mask


def random_mask(H: int, nb: int, density: float, gen) -> torch.Tensor:
    mask = torch.rand(H, nb, nb, generator=gen) < density
    return mask | torch.eye(nb, dtype=torch.bool)


def block_lists(pattern: str, density: float, H: int, nb: int, is_text, gen):
    """(mask, kv_indices, kv_counts) on the GPU for one benchmark case; random masks differ per
    head, the others are one (1, 1, ...) table shared by every head."""
    if pattern == "random":
        mask = random_mask(H, nb, density, gen)
        idx, cnt = tables(mask[None])
    elif pattern == "dense":
        mask = torch.ones(nb, nb, dtype=torch.bool)
        idx, cnt = (t[None, None] for t in tables(mask))
    else:
        mask = band_mask(nb, density, is_text)
        idx, cnt = (t[None, None] for t in tables(mask))
    return mask, idx.cuda(), cnt.cuda()


def check_slice(q, k, v, out, mask, order, reordered, gen):
    """Max abs error of `out` against SDPA with the token-level mask, on 256 query rows of head 0."""
    S = q.shape[2]
    nb = mask.shape[-1]
    qb = int(torch.randint(0, nb, (1,), generator=gen))
    rows = torch.arange(qb * BLOCK, min(S, qb * BLOCK + 2 * BLOCK), device=q.device)
    m = mask[0] if mask.dim() == 3 else mask
    q0, k0, v0, o0 = q[0, 0], k[0, 0], v[0, 0], out[0, 0]
    if reordered:
        perm = order.position_major_index(q.device)
        q0, k0, v0, o0 = q0[perm], k0[perm], v0[perm], o0[perm]
    key_ok = m[rows.cpu() // BLOCK].repeat_interleave(BLOCK, 1)[:, :S].to(q.device)
    ref = F.scaled_dot_product_attention(
        q0[rows].float()[None], k0.float()[None], v0.float()[None], attn_mask=key_ok[None]
    )[0]
    return (o0[rows].float() - ref).abs().max().item()


def check_small_shapes():
    """GPU kernel against the float32 reference on odd shapes, bf16 and fp16, with reordering,
    on contiguous (B, H, S, D) tensors and on (B, H, S, D) views of (B, S, H, D) ones."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for S, D, bs, dtype, layout in itertools.product(
            (200, 333, 1000), (64, 128, 80), (16, 64, 128), (torch.bfloat16, torch.float16), ("bhsd", "bshd")):
        order = TokenOrder(4, (S - 8) // 4, S - 4 * ((S - 8) // 4), "suffix")
        shape = (2, 3, S, D) if layout == "bhsd" else (2, S, 3, D)
        q, k, v = (torch.randn(shape, generator=gen).to("cuda", dtype) for _ in range(3))
        if layout == "bshd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        nb = math.ceil(S / bs)
        mask = torch.rand(2, 3, nb, nb, generator=gen) < 0.4
        mask[:, :, 0] = False
        idx, cnt = (t.cuda() for t in tables(mask))
        heads = torch.tensor([True, False, True], device="cuda")
        out, lse = block_sparse_attention(q, k, v, idx, cnt, block_size=bs, return_lse=True, order=order, reordered_heads=heads)
        ref, ref_lse = block_sparse_attention_reference(
            q.float(), k.float(), v.float(), idx, cnt, block_size=bs, return_lse=True, order=order, reordered_heads=heads
        )
        err = ((out.float() - ref).norm() / ref.norm()).item()
        # equal -inf (empty blocks) give nan differences, counted as equal
        lse_ok = bool(((lse - ref_lse).abs().nan_to_num(0.0) < 2e-2).all())
        if err > 1e-2 or not lse_ok:
            raise SystemExit(f"GPU kernel wrong: S={S} D={D} bs={bs} {dtype} {layout}: rel err {err:.2e}, "
                             f"lse ok {lse_ok}")
        worst = max(worst, err)
    print(f"GPU kernel matches the reference on odd shapes (worst relative error {worst:.1e})", flush=True)
    return worst


def shape_inputs(name):
    """Random bf16 (q, k, v) of a benchmark shape, cuDNN's dense time on them, and the blocks
    holding text tokens."""
    B, H, S, D, order = SHAPES[name]
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = stream_time(lambda: F.scaled_dot_product_attention(q, k, v))
    return (q, k, v), cudnn_ms, text_blocks(order, math.ceil(S / BLOCK))


def run_shape(name, flex, records, sweep=False):
    B, H, S, D, order = SHAPES[name]
    nb = math.ceil(S / BLOCK)
    gen = torch.Generator().manual_seed(0)
    from torch.nn.attention.flex_attention import BlockMask

    (q, k, v), cudnn_ms, is_text = shape_inputs(name)
    flops_dense = 4 * B * H * S * S * D
    print(f"[{name}] cuDNN dense {cudnn_ms:.2f} ms ({flops_dense / cudnn_ms / 1e9:.0f} TFLOP/s)", flush=True)

    def case(pattern, density):
        return block_lists(pattern, density, H, nb, is_text, gen)

    perm = order.position_major_index("cuda")

    def ours(idx, cnt, pattern, cfg=None):
        if pattern == "temporal":  # position-major heads: one pass over q, k, v; output via the index map
            return lambda: block_sparse_attention(q, k, v, idx, cnt, block_size=BLOCK, config=cfg, order=order)
        return lambda: block_sparse_attention(q, k, v, idx, cnt, block_size=BLOCK, config=cfg)

    if sweep:
        for pattern, density in (("dense", 1.0), ("spatial", 0.2), ("temporal", 0.2)):
            mask, idx, cnt = case(pattern, density)
            d = mask.float().mean().item()
            for cfg in SWEEP:
                try:
                    ms = stream_time(ours(idx, cnt, pattern, cfg), budget_ms=600)
                except Exception as e:  # a config the compiler cannot fit (shared memory) is skipped
                    print(f"  {cfg}: failed ({type(e).__name__}: {str(e)[:80]})")
                    continue
                eff = cudnn_ms * d / ms
                records.append(dict(shape=[B, H, S, D], pattern=pattern, density=round(d, 4), config=cfg.__dict__, ms=ms, efficiency=eff))
                print(f"  {pattern:8s} d={d:.3f} {cfg}: {ms:.3f} ms eff {eff:.3f}", flush=True)
        return

    patterns = ("random", "spatial", "temporal")
    cases = [("dense", 1.0)] + [(p, d) for p in patterns for d in DENSITIES]
    spatial_02 = None
    for pattern, target in cases:
        mask, idx, cnt = case(pattern, target)
        density = mask.float().mean().item()
        fn = ours(idx, cnt, pattern)
        out = fn()
        err = check_slice(q, k, v, out, mask, order, pattern.startswith("temporal"), gen)
        del out
        ms = stream_time(fn)
        host_us = host_time_us(fn, calls=max(5, min(100, int(300 / ms))))
        full_idx = torch.zeros(B, H, nb, nb, dtype=torch.int32, device="cuda")  # one Flex compile per shape
        full_idx[..., : idx.shape[-1]] = idx
        full_cnt = cnt.expand(B, H, nb).contiguous()
        bm = BlockMask.from_kv_blocks(full_cnt, full_idx, BLOCK_SIZE=BLOCK, seq_lengths=(S, S))
        if pattern.startswith("temporal"):
            # Flex gets pre-reordered q, k, v (its reorder is not timed; ours is)
            fq, fk, fv = q[:, :, perm], k[:, :, perm], v[:, :, perm]
        else:
            fq, fk, fv = q, k, v
        flex_ms = stream_time(lambda: flex(fq, fk, fv, block_mask=bm))
        del fq, fk, fv, bm, full_idx
        rec = dict(
            shape=[B, H, S, D], pattern=pattern, density=round(density, 4), ms=round(ms, 4),
            cudnn_dense_ms=round(cudnn_ms, 4), flex_ms=round(flex_ms, 4),
            efficiency=round(cudnn_ms * density / ms, 4), vs_flex=round(flex_ms / ms, 4),
            tflops=round(flops_dense * density / ms / 1e9, 1), host_us=round(host_us, 1),
            max_abs_err=err, correct=err < 2e-2,
        )
        records.append(rec)
        if pattern == "spatial" and target == 0.2:
            spatial_02 = (idx, cnt, ms, density)
        print(
            f"  {pattern:8s} d={density:.3f} ours {ms:8.3f} ms  flex {flex_ms:8.3f}  eff {rec['efficiency']:.3f}"
            f"  vs_flex {rec['vs_flex']:.2f}  err {err:.1e}",
            flush=True,
        )
    # token reordering at density 0.2: the q, k, v pass the temporal path makes, and the whole extra
    # time of a temporal call over a spatial call on the same block mask
    idx, cnt, sparse_ms, density = spatial_02
    reorder_ms = stream_time(lambda: [reorder_tokens(t, order) for t in (q, k, v)])
    temporal_ms = stream_time(ours(idx, cnt, "temporal"))
    records.append(dict(
        shape=[B, H, S, D], pattern="reorder", density=round(density, 4),
        sparse_ms=round(sparse_ms, 4), reorder_ms=round(reorder_ms, 4),
        reorder_fraction=round(reorder_ms / sparse_ms, 4), temporal_ms=round(temporal_ms, 4),
        temporal_overhead=round((temporal_ms - sparse_ms) / sparse_ms, 4),
    ))
    print(
        f"  reorder at d=0.2: q,k,v pass {reorder_ms:.3f} ms ({reorder_ms / sparse_ms:.1%} of {sparse_ms:.3f} ms); "
        f"temporal call {temporal_ms:.3f} ms ({(temporal_ms - sparse_ms) / sparse_ms:+.1%} over spatial)",
        flush=True,
    )
    del q, k, v
    torch.cuda.empty_cache()


def run_phase(name, records):
    """Our kernel with each key list walked from its start, and from the program's launch phase
    (the default), on random and spatial masks: what walking the key range in step saves in L2."""
    B, H, S, D, _ = SHAPES[name]
    nb = math.ceil(S / BLOCK)
    gen = torch.Generator().manual_seed(0)
    (q, k, v), cudnn_ms, is_text = shape_inputs(name)
    phased = default_config(BLOCK, device=q.device)
    configs = {"from_start": dataclasses.replace(phased, resident_programs=0), "phased": phased}
    for pattern, target in itertools.product(("random", "spatial"), (0.1, 0.2, 0.5)):
        mask, idx, cnt = block_lists(pattern, target, H, nb, is_text, gen)
        density = mask.float().mean().item()
        ms = {label: stream_time(lambda: block_sparse_attention(q, k, v, idx, cnt, block_size=BLOCK, config=cfg))
              for label, cfg in configs.items()}
        rec = dict(shape=[B, H, S, D], pattern=pattern, density=round(density, 4), cudnn_dense_ms=round(cudnn_ms, 4),
                   resident_programs=phased.resident_programs, speedup=round(ms["from_start"] / ms["phased"], 4))
        for label, t in ms.items():
            rec[f"{label}_ms"] = round(t, 4)
            rec[f"{label}_efficiency"] = round(cudnn_ms * density / t, 4)
        records.append(rec)
        print(f"  [{name}] {pattern:8s} d={density:.3f} from start {ms['from_start']:.3f} ms "
              f"(eff {rec['from_start_efficiency']:.3f})  phased {ms['phased']:.3f} ms "
              f"(eff {rec['phased_efficiency']:.3f})  x{rec['speedup']:.3f}", flush=True)
    del q, k, v
    torch.cuda.empty_cache()


def _page_head(title, command, paragraphs, columns):
    """Title, command, explanatory paragraphs and a table header, as markdown lines."""
    lines = [f"# {title}", "", f"Command: `{command}`", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    return lines + ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def phase_markdown(records, command, device):
    lines = _page_head("Key lists walked from each program's launch phase, on " + device, command, [
        "Each program of the kernel walks its query block's key list either from the start or from the "
        "block at its launch phase among the programs the GPU runs at once (2 x SMs with the default tiles; "
        "`KernelConfig.resident_programs`). Programs start in launch order as others finish, so with "
        "phases the programs running together reach the same keys together and share them in L2. "
        "GPU ms per call, calls back to back; efficiency = cuDNN dense time x density / our time. bf16."],
        ["shape", "pattern", "density", "from start ms", "phased ms", "efficiency from start",
         "efficiency phased", "speed-up"])
    for r in records:
        lines.append(
            f"| {r['shape']} | {r['pattern']} | {r['density']:.3f} | {r['from_start_ms']:.3f} | {r['phased_ms']:.3f} | "
            f"{r['from_start_efficiency']:.3f} | {r['phased_efficiency']:.3f} | {r['speedup']:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def markdown(records, command, device):
    lines = _page_head("Block-sparse attention kernel on " + device, command, [
        "Efficiency = cuDNN dense time x density / our time; vs_flex = FlexAttention time / our time "
        "(same block mask, block 128, torch.compile'd). temporal: a position-major band; our time "
        "includes the reordering pass over q, k and v (the output is written through the index map "
        "by the kernel); Flex gets pre-reordered tensors and its reordering is not timed. bf16.",
        "Times are GPU milliseconds per call with calls queued back to back (`dit_sparse.bench.timing.stream_time`), "
        "as in a model's forward, for all three kernels alike. host us: the CPU time to issue one of our calls "
        "(argument checks and launches), which overlaps the GPU's work unless the GPU runs out of queued work."],
        ["shape", "pattern", "density", "ours ms", "cuDNN dense ms", "flex ms", "efficiency", "vs_flex", "host us",
         "max err"])
    for r in records:
        if r["pattern"] == "reorder":
            continue
        lines.append(
            f"| {r['shape']} | {r['pattern']} | {r['density']:.3f} | {r['ms']:.3f} | {r['cudnn_dense_ms']:.3f} | "
            f"{r['flex_ms']:.3f} | {r['efficiency']:.3f} | {r['vs_flex']:.2f} | {r.get('host_us', float('nan')):.0f} | "
            f"{r['max_abs_err']:.1e} |"
        )
    lines += ["", "## Token reordering at density 0.2", "",
              "reorder = the pass over q, k and v; overhead = (temporal - spatial) / spatial on the same block mask.", "",
              "| shape | spatial ms | reorder ms | reorder fraction | temporal ms | overhead |",
              "|---|---|---|---|---|---|"]
    for r in records:
        if r["pattern"] == "reorder":
            lines.append(
                f"| {r['shape']} | {r['sparse_ms']:.3f} | {r['reorder_ms']:.3f} | {r['reorder_fraction']:.1%} | "
                f"{r['temporal_ms']:.3f} | {r['temporal_overhead']:+.1%} |"
            )
    return "\n".join(lines) + "\n"


def parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--quantized", action="store_true", help="time the quantized (int8 / fp8) kernel against the "
                    "bf16 one and cuDNN instead (dit_sparse/bench/quantized_kernels.py); with --sweep, its tile "
                    "configs first")
    return ap


def run(args) -> dict:
    """Run the benchmark of `args` (from `parser()`); raises ValueError on input it cannot run."""
    if not torch.cuda.is_available():
        raise ValueError("the kernel benchmark needs a CUDA GPU (it times Triton, cuDNN and FlexAttention "
                         "kernels); none is visible here")
    names = args.shapes.split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"--shapes: unknown shape {unknown}; choose from {list(SHAPES)}")
    if args.sweep and args.phase:
        raise ValueError("--sweep and --phase are two different runs; choose one")
    command = getattr(args, "command", None) or "python scripts/bench_kernels.py " + " ".join(sys.argv[1:])
    if getattr(args, "quantized", False):
        from . import quantized_kernels

        if args.phase:
            raise ValueError("--quantized and --phase are two different runs; choose one")
        if "cogvideox" in names:
            raise ValueError("--quantized times the three long shapes (wan480, wan720, hunyuan720)")
        return quantized_kernels.run(names, SHAPES, Path(args.out), command, args.sweep)
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    device = torch.cuda.get_device_name()
    check_small_shapes()
    records = []
    t0 = time.time()
    for name in names:
        if args.phase:
            run_phase(name, records)
        else:
            run_shape(name, flex, records, sweep=args.sweep)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "kernel_phase_" if args.phase else "kernel_sweep_" if args.sweep else "kernels_"
    stem = kind + gpu_tag(device)
    path = out / f"{stem}.json"
    if not args.sweep and path.exists():  # one table per GPU, built up over runs of shape groups
        shapes = {tuple(r["shape"]) for r in records}
        records = [r for r in json.loads(path.read_text()) if tuple(r["shape"]) not in shapes] + records
    path.write_text(json.dumps(records, indent=1))
    meta = dict(device=device, torch=torch.__version__, triton=__import__("triton").__version__,
                python=platform.python_version(), seconds=round(time.time() - t0))
    (out / f"{stem}_meta.json").write_text(json.dumps(dict(meta, command=command), indent=1))
    if args.phase:
        (out / f"{stem}.md").write_text(phase_markdown(records, command, device))
    elif not args.sweep:
        (out / f"{stem}.md").write_text(markdown(records, command, device))
    print(json.dumps(meta))
    return meta


def main(argv=None):
    try:
        run(parser().parse_args(argv))
    except ValueError as e:
        sys.exit(str(e))
