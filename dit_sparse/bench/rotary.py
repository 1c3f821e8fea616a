"""Rotary embeddings on the GPU: diffusers' PyTorch ops against our one-pass Triton kernel, on
one self-attention call's q and k with the model's own tables (equal bit for bit, and timed)."""

from __future__ import annotations

import torch
from diffusers import FluxPipeline
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxPosEmbed
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from dit_sparse.kernels import interleaved_rotary, interleaved_rotary_reference

from .timing import cuda_time, write_gpu_results


def wan_tables(frames, height, width):
    """Wan's (1, S, 1, D) tables of a latent grid (patch (1, 2, 2) already applied)."""
    rope = WanRotaryPosEmbed(128, (1, 1, 1), max_seq_len=1024).cuda()
    return rope(torch.zeros(1, 1, frames, height, width, device="cuda"))


def hunyuan_tables():
    """HunyuanVideo's (S, D) tables at 720x1280x129 (latent 33 x 90 x 160, patch 2)."""
    rope = HunyuanVideoRotaryPosEmbed(2, 1, [16, 56, 56], 256.0).cuda()
    return rope(torch.zeros(1, 1, 33, 90, 160, device="cuda"))


def flux_tables():
    """FLUX.1-dev's (S, D) tables at 1024x1024: 512 text ids, then 64 x 64 image ids."""
    ids = torch.cat([torch.zeros(512, 3), FluxPipeline._prepare_latent_image_ids(1, 64, 64, "cpu", torch.float32)])
    return FluxPosEmbed(10000, [16, 56, 56])(ids.cuda())


# name: (heads, convention, tables)
SHAPES = {
    "wan1.3b-480": (12, "wan", lambda: wan_tables(21, 30, 52)),
    "wan14b-720": (40, "wan", lambda: wan_tables(21, 45, 80)),
    "hunyuan-720": (24, "diffusers", hunyuan_tables),
    "flux-1024": (24, "diffusers", flux_tables),
}


def run_shape(name: str) -> dict:
    """One shape's record: whether our output equals diffusers', and both times."""
    heads, convention, make_tables = SHAPES[name]
    cos, sin = make_tables()
    if convention == "wan":
        def stock_rotary(x):
            return interleaved_rotary_reference(x, cos, sin)
    else:
        tables = (cos, sin)  # (S, D), as the processors receive them

        def stock_rotary(x):
            return apply_rotary_emb(x, tables, sequence_dim=1)
        cos, sin = cos[None, :, None], sin[None, :, None]
    tokens, head_dim = cos.shape[1], cos.shape[3]
    gen = torch.Generator(device="cuda").manual_seed(0)
    # q and k as the processor has them: (B, S, H, D) views of the (B, S, H * D) projections
    q, k = (torch.randn(1, tokens, heads * head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            .unflatten(2, (heads, head_dim)) for _ in range(2))
    ours = interleaved_rotary(q, k, cos, sin, convention=convention)
    stock = (stock_rotary(q), stock_rotary(k))
    if any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(ours, stock, strict=True)):
        raise RuntimeError(f"[{name}] our output and diffusers' differ in shape or dtype")
    equal = all(torch.equal(a, b) for a, b in zip(ours, stock, strict=True))
    mismatches = sum(int((a != b).sum()) for a, b in zip(ours, stock, strict=True))
    stock_ms = cuda_time(lambda: (stock_rotary(q), stock_rotary(k)))
    ours_ms = cuda_time(lambda: interleaved_rotary(q, k, cos, sin, convention=convention))
    moved = 4 * q.numel() * q.element_size() + 2 * cos.numel() * cos.element_size()  # read q, k, tables; write 2
    record = dict(shape=name, convention=convention, tokens=tokens, heads=heads, head_dim=head_dim, equal=equal,
                  mismatches=mismatches,
                  stock_ms=stock_ms, ours_ms=ours_ms, speedup=stock_ms / ours_ms,
                  ours_tb_per_s=moved / ours_ms / 1e9)
    print(f"[{name}] stock {stock_ms:.3f} ms, ours {ours_ms:.3f} ms ({record['speedup']:.1f}x, "
          f"{record['ours_tb_per_s']:.2f} TB/s), equal {equal}", flush=True)
    return record


def markdown(records, command, device) -> str:
    lines = [f"# Rotary embeddings: diffusers' ops vs our Triton pass ({device})", "",
             "q and k of one self-attention call, bf16, the model's own float32 tables; times for both tensors. "
             "convention wan: WanAttnProcessor's rotary; diffusers: `apply_rotary_emb` (HunyuanVideo, Flux). "
             "equal: our output equals diffusers' bit for bit.", "",
             "| shape | convention | tokens x heads x dim | diffusers ms | ours ms | speed-up | ours TB/s | equal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['shape']} | {r['convention']} | {r['tokens']} x {r['heads']} x {r['head_dim']} | "
                     f"{r['stock_ms']:.3f} | "
                     f"{r['ours_ms']:.3f} | {r['speedup']:.1f}x | {r['ours_tb_per_s']:.2f} | "
                     f"{'yes' if r['equal'] else 'NO (%d values differ)' % r['mismatches']} |")
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def run(names: list[str], out, command: str) -> tuple[str, list[dict]]:
    """Check and time each shape, write out/rotary_<gpu>.json and .md; (the Markdown, the records)."""
    with torch.no_grad():
        records = [run_shape(n) for n in names]
    device = torch.cuda.get_device_name()
    md = markdown(records, command, device)
    write_gpu_results(out, "rotary", device, dict(device=device, command=command, records=records), md)
    return md, records
