"""The quantized block-sparse attention kernel against our bf16 kernel and cuDNN, on a CUDA GPU.

    python scripts/bench_kernels.py --quantized --shapes wan480,wan720,hunyuan720 --out docs/results
    python scripts/bench_kernels.py --quantized --sweep ...   # tile configs first; the best one per format is timed

Checks the Triton kernel against the PyTorch reference on odd shapes on the GPU, then per shape
and block pattern (all blocks, random lists at densities 0.1-0.5, a temporal band at 0.2) times
the bf16 kernel, the quantized kernel in each format (the quantization pass included: the op
quantizes q, k, v on every call) and cuDNN dense SDPA, and measures each quantized output
against the bf16 kernel's (relative L2 error, mean cosine similarity over rows). Writes
kernels_quantized_<gpu>.json / .md, merging with other shapes' records there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dit_sparse.kernels import (
    KernelConfig,
    TokenOrder,
    block_sparse_attention,
    default_quantized_config,
    quantize_qkv,
    quantized_block_sparse_attention,
)
from dit_sparse.patterns import block_tables

from .timing import gpu_tag, stream_time

BLOCK = 128
DENSITIES = (0.1, 0.2, 0.3, 0.5)
VARIANTS = (("int8", "int8"), ("fp8", "fp8"), ("int8", "fp8"))
"""(Q·Kᵀ format, P·V format): precision "int8", precision "fp8", and SageAttention2's mix."""
SWEEP = (
    KernelConfig(128, 64, 4, 2), KernelConfig(128, 64, 4, 3), KernelConfig(128, 64, 8, 2),
    KernelConfig(128, 128, 8, 2), KernelConfig(128, 128, 8, 3),
)
BUDGET_MS = 600.0


def variant_name(variant) -> str:
    qk, pv = variant
    return qk if qk == pv else f"{qk}-{pv}"


def relative_error(out, ref) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def mean_cosine(out, ref) -> float:
    return F.cosine_similarity(out.float().flatten(0, -2), ref.float().flatten(0, -2), dim=-1).mean().item()


def check_small_shapes() -> dict:
    """The Triton kernel against the PyTorch reference run on the GPU, per variant, on odd shapes
    with templates, reordered heads and the diffusers layout: the worst relative L2 error."""
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for S, D, bs in ((333, 64, 64), (1000, 128, 128), (517, 80, 128)):
        order = TokenOrder(4, (S - 8) // 4, S - 4 * ((S - 8) // 4), "suffix")
        q, k, v = (torch.randn(2, S, 3, D, generator=gen).to("cuda", torch.bfloat16).transpose(1, 2) for _ in range(3))
        nb = math.ceil(S / bs)
        mask = torch.rand(4, nb, nb, generator=gen) < 0.4
        mask |= torch.eye(nb, dtype=torch.bool)
        idx, cnt = (t.cuda() for t in block_tables(mask))
        pattern = torch.randint(0, 4, (2, 3), generator=gen, dtype=torch.int32).cuda()
        heads = torch.tensor([True, False, True], device="cuda")
        for variant in VARIANTS:
            cfg = default_quantized_config(bs, "cuda")
            outs = [quantized_block_sparse_attention(
                q, k, v, idx, cnt, head_pattern=pattern, block_size=bs, order=order, reordered_heads=heads,
                precision=variant[0], pv_precision=variant[1], backend=backend, config=cfg) for backend in ("triton", "torch")]
            name = variant_name(variant)
            worst[name] = max(worst.get(name, 0.0), relative_error(*outs))
    print(f"quantized kernel vs its reference on the GPU (worst relative L2 per format): {worst}", flush=True)
    return worst


def shape_inputs(shape):
    B, H, S, D, order = shape
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = stream_time(lambda: F.scaled_dot_product_attention(q, k, v), budget_ms=BUDGET_MS)
    return (q, k, v), cudnn_ms


def block_lists(pattern, density, H, nb, gen):
    """(density, kv_indices, kv_counts) on the GPU: random lists per head (each with its own
    block), every block, or a band shared by all heads (the temporal case)."""
    if pattern == "random":
        mask = (torch.rand(H, nb, nb, generator=gen) < density) | torch.eye(nb, dtype=torch.bool)
        idx, cnt = block_tables(mask[None])
    else:
        if pattern == "dense":
            mask = torch.ones(nb, nb, dtype=torch.bool)
        else:
            dist = (torch.arange(nb)[:, None] - torch.arange(nb)[None, :]).abs()
            radius = next(r for r in range(nb) if (dist <= r).float().mean() >= density)
            mask = dist <= radius
        idx, cnt = (t[None, None] for t in block_tables(mask))
    return mask.float().mean().item(), idx.cuda(), cnt.cuda()


def sweep(shape, records, density=0.3) -> dict:
    """Each SWEEP config for the int8 and fp8 variants on random lists: the fastest config per
    variant (the int8-fp8 mix takes int8's)."""
    B, H, S, D, order = shape
    (q, k, v), _ = shape_inputs(shape)
    sms = torch.cuda.get_device_properties("cuda").multi_processor_count
    d, idx, cnt = block_lists("random", density, H, math.ceil(S / BLOCK), torch.Generator().manual_seed(1))
    best = {}
    for variant in VARIANTS[:2]:
        for cfg in SWEEP:
            cfg = dataclasses.replace(cfg, resident_programs=2 * sms)
            try:
                ms = stream_time(lambda: quantized_block_sparse_attention(
                    q, k, v, idx, cnt, block_size=BLOCK, precision=variant[0], pv_precision=variant[1], config=cfg),
                    budget_ms=BUDGET_MS)
            except Exception as e:  # a config the compiler cannot fit is skipped
                print(f"  sweep {variant_name(variant)} {cfg}: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
                continue
            records.append(dict(kind="sweep", shape=[B, H, S, D], density=round(d, 4), variant=variant_name(variant),
                                config=dataclasses.asdict(cfg), ms=round(ms, 4)))
            print(f"  sweep {variant_name(variant):9s} {cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}: "
                  f"{ms:.3f} ms", flush=True)
            if variant not in best or ms < best[variant][1]:
                best[variant] = (cfg, ms)
    del q, k, v
    torch.cuda.empty_cache()
    configs = {variant: cfg for variant, (cfg, _) in best.items()}
    if VARIANTS[0] in configs:
        configs[VARIANTS[2]] = configs[VARIANTS[0]]
    return configs


def run_shape(name, shape, records, configs):
    B, H, S, D, order = shape
    nb = math.ceil(S / BLOCK)
    gen = torch.Generator().manual_seed(0)
    (q, k, v), cudnn_ms = shape_inputs(shape)
    print(f"[{name}] cuDNN dense {cudnn_ms:.2f} ms", flush=True)
    for variant in VARIANTS:
        cfg = configs.get(variant) or default_quantized_config(BLOCK, "cuda")
        ms = stream_time(lambda: quantize_qkv(q, k, v, block_n=cfg.block_n, precision=variant[0],
                                              pv_precision=variant[1]), budget_ms=BUDGET_MS)
        records.append(dict(kind="pass", shape=[B, H, S, D], variant=variant_name(variant), ms=round(ms, 4)))
        print(f"  quantization pass {variant_name(variant):9s} {ms:.3f} ms", flush=True)
    cases = [("dense", 1.0)] + [("random", d) for d in DENSITIES] + [("temporal", 0.2)]
    for pattern, target in cases:
        density, idx, cnt = block_lists(pattern, target, H, nb, gen)
        extra = dict(order=order) if pattern == "temporal" else {}
        bf16 = block_sparse_attention(q, k, v, idx, cnt, block_size=BLOCK, **extra)
        bf16_ms = stream_time(lambda: block_sparse_attention(q, k, v, idx, cnt, block_size=BLOCK, **extra),
                              budget_ms=BUDGET_MS)
        rec = dict(kind="attention", shape=[B, H, S, D], pattern=pattern, density=round(density, 4),
                   cudnn_dense_ms=round(cudnn_ms, 4), bf16_ms=round(bf16_ms, 4))
        line = f"  {pattern:8s} d={density:.3f} bf16 {bf16_ms:8.3f} ms"
        for variant in VARIANTS:
            cfg = configs.get(variant) or default_quantized_config(BLOCK, "cuda")

            def fn():
                return quantized_block_sparse_attention(q, k, v, idx, cnt, block_size=BLOCK, precision=variant[0],
                                                        pv_precision=variant[1], config=cfg, **extra)

            out = fn()
            err, cos = relative_error(out, bf16), mean_cosine(out, bf16)
            del out
            ms = stream_time(fn, budget_ms=BUDGET_MS)
            rec[variant_name(variant)] = dict(
                ms=round(ms, 4), speedup_vs_bf16=round(bf16_ms / ms, 4), vs_cudnn=round(cudnn_ms * density / ms, 4),
                rel_l2=round(err, 5), cosine=round(cos, 6), config=dataclasses.asdict(cfg))
            line += f" | {variant_name(variant)} {ms:7.3f} ms x{bf16_ms / ms:.2f} err {err:.3f} cos {cos:.5f}"
        del bf16
        records.append(rec)
        print(line, flush=True)
    del q, k, v
    torch.cuda.empty_cache()


def markdown(records, command, device) -> str:
    names = [variant_name(v) for v in VARIANTS]
    lines = [f"# Quantized block-sparse attention on {device}", "", f"Command: `{command}`", "",
             "Times are GPU ms per call, calls back to back (`dit_sparse.bench.timing.stream_time`). Every quantized "
             "time includes the quantization pass over q, k and v (the op runs it on each call). x bf16 = our bf16 "
             "kernel's time / the quantized kernel's; x cuDNN = cuDNN dense time x density / the quantized kernel's. "
             "err / cos: relative L2 error and mean cosine similarity (over rows) of the quantized output against the "
             "bf16 kernel's, on random bf16 inputs. Formats (Q·Kᵀ-P·V): int8 = int8-int8 (precision \"int8\"), "
             "fp8 = fp8-fp8 (precision \"fp8\"), int8-fp8 = SageAttention2's mix. temporal: a position-major band; "
             "the bf16 kernel's time includes its reordering pass, the quantized pass reorders as it quantizes.", "",
             "| shape | pattern | density | cuDNN dense ms | bf16 ms | " + " | ".join(
                 f"{n} ms | {n} x bf16 | {n} x cuDNN | {n} err | {n} cos" for n in names) + " |",
             "|" + "---|" * (5 + 5 * len(names))]
    for r in records:
        if r["kind"] != "attention":
            continue
        cells = [f"{r[n]['ms']:.3f} | {r[n]['speedup_vs_bf16']:.2f} | {r[n]['vs_cudnn']:.2f} | {r[n]['rel_l2']:.4f} | "
                 f"{r[n]['cosine']:.5f}" if n in r else "- | - | - | - | -" for n in names]
        lines.append(f"| {r['shape']} | {r['pattern']} | {r['density']:.3f} | {r['cudnn_dense_ms']:.3f} | "
                     f"{r['bf16_ms']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "## The quantization pass alone", "", "| shape | format | ms |", "|---|---|---|"]
    lines += [f"| {r['shape']} | {r['variant']} | {r['ms']:.3f} |" for r in records if r["kind"] == "pass"]
    sweeps = [r for r in records if r["kind"] == "sweep"]
    if sweeps:
        lines += ["", "## Tile configs (random lists)", "", "| shape | density | format | tiles | warps | stages | ms |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['density']:.3f} | {r['variant']} | {r['config']['block_m']}x{r['config']['block_n']} | "
                  f"{r['config']['num_warps']} | {r['config']['num_stages']} | {r['ms']:.3f} |" for r in sweeps]
    return "\n".join(lines) + "\n"


def summary(records) -> str:
    """A short table: per shape and pattern, each format's speed-up over bf16 and its error."""
    lines = ["shape              pattern  dens  " + "  ".join(f"{variant_name(v):>22s}" for v in VARIANTS)]
    for r in records:
        if r["kind"] == "attention":
            cells = [f"x{r[n]['speedup_vs_bf16']:.2f} e{r[n]['rel_l2']:.3f} c{r[n]['cosine']:.4f}" if n in r else "-"
                     for n in (variant_name(v) for v in VARIANTS)]
            lines.append(f"{str(r['shape']):18s} {r['pattern']:8s} {r['density']:.2f}  " + "  ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def run(names, shapes, out: Path, command: str, do_sweep: bool) -> dict:
    """The benchmark over `names` (keys of `shapes`); writes and merges the JSON and Markdown."""
    device = torch.cuda.get_device_name()
    stem = "kernels_quantized_" + gpu_tag(device)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    records = []
    records.append(dict(kind="check", worst_rel_l2=check_small_shapes()))
    configs = sweep(shapes["wan720"], records) if do_sweep else {}
    for name in names:
        run_shape(name, shapes[name], records, configs)
        path = out / f"{stem}.json"
        new_shapes = {tuple(r["shape"]) for r in records if "shape" in r}
        kept = [r for r in json.loads(path.read_text()) if r["kind"] != "check"
                and tuple(r["shape"]) not in new_shapes] if path.exists() else []
        merged = kept + records
        path.write_text(json.dumps(merged, indent=1))
        (out / f"{stem}.md").write_text(markdown(merged, command, device))
    meta = dict(device=device, torch=torch.__version__, triton=__import__("triton").__version__,
                seconds=round(time.time() - t0), command=command)
    (out / f"{stem}_meta.json").write_text(json.dumps(meta, indent=1))
    print(summary(records), flush=True)
    return meta
