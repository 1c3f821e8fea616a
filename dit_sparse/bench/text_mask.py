"""What a padded-text key mask costs cuDNN attention on the GPU: the stock masked call against
the valid tokens unmasked (as our HunyuanVideo processor attends them), as a view and copied."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sdpa import sdpa_priority
from .timing import cuda_time, write_gpu_results


def measure(video: int, text: int, valid_text: int, heads: int, command: str) -> dict:
    """The three variants' times and their difference from the masked call on the valid rows,
    in the (B, S, H, D) -> (B, H, S, D) transposed layout diffusers' dispatch passes."""
    S, valid, H, D = video + text, video + valid_text, heads, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2) for _ in range(3))
    mask = (torch.arange(S, device="cuda") < valid)[None, None, None]
    variants = {
        "masked": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "valid view": lambda: F.scaled_dot_product_attention(q[:, :, :valid], k[:, :, :valid], v[:, :, :valid]),
        "valid contiguous": lambda: F.scaled_dot_product_attention(
            *(t[:, :, :valid].contiguous() for t in (q, k, v))),
    }
    records = []
    with sdpa_priority():
        outs = {name: fn()[:, :, :valid] for name, fn in variants.items()}
        for name, fn in variants.items():
            ms = cuda_time(fn, reps=3)
            err = float((outs[name].float() - outs["masked"].float()).abs().max())
            records.append(dict(variant=name, ms=ms, max_abs_diff_vs_masked=err))
            print(f"{name}: {ms:.1f} ms, max |diff| vs masked {err:.2e}", flush=True)
    base = records[0]["ms"]
    for r in records:
        r["vs_masked"] = base / r["ms"]
    device = torch.cuda.get_device_name()
    return dict(device=device, command=command, shape=[1, H, S, D], valid_tokens=valid, records=records)


def markdown(meta: dict) -> str:
    _, H, S, D = meta["shape"]
    lines = [f"# cuDNN attention with and without the padded-text key mask ({meta['device']})", "",
             f"Command: `{meta['command']}`. One call, (1, {H}, {S}, {D}) bf16, {meta['valid_tokens']} valid tokens.", "",
             "| variant | ms | speed-up over masked | max abs diff vs masked (valid rows) |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms']:.1f} | {r['vs_masked']:.2f}x | {r['max_abs_diff_vs_masked']:.1e} |"
              for r in meta["records"]]
    return "\n".join(lines) + "\n"


def run(video: int, text: int, valid_text: int, heads: int, out, command: str) -> str:
    """Measure, write out/text_mask_<gpu>.json and .md; returns the Markdown."""
    meta = measure(video, text, valid_text, heads, command)
    md = markdown(meta)
    write_gpu_results(out, "text_mask", meta["device"], meta, md)
    return md
