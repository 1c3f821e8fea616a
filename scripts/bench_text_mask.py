"""What a padded-text key mask costs cuDNN attention at HunyuanVideo 720p, on a CUDA GPU.

HunyuanVideo's stock processor passes a (B, 1, 1, S) key mask for the padded text tokens; our
processor instead attends the video + valid text tokens unmasked (the same result). This times
one self-attention call of the real shape (24 heads x 128, 118,800 video + 256 text tokens of
which 64 valid) under `sdpa_kernel([cuDNN, flash, efficient, math], set_priority=True)`, in the
(B, S, H, D) -> (B, H, S, D) transposed layout diffusers' dispatch passes:

- masked: all tokens with the stock mask;
- valid view: the valid tokens as a slice (what the processor passes);
- valid contiguous: the same tokens copied contiguous first (copy timed in);
checks the three agree on the valid rows, and writes DIR/text_mask_<gpu>.json and .md (e.g. text_mask_h100).

    python scripts/bench_text_mask.py --out docs/results
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dit_sparse.timing import cuda_time, write_gpu_results

PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=int, default=118800)
    ap.add_argument("--text", type=int, default=256)
    ap.add_argument("--valid-text", type=int, default=64)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_text_mask needs a CUDA GPU")
    S, valid, H, D = args.video + args.text, args.video + args.valid_text, args.heads, 128
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
    with sdpa_kernel(PRIORITY, set_priority=True):
        outs = {name: fn()[:, :, :valid] for name, fn in variants.items()}
        for name, fn in variants.items():
            ms = cuda_time(fn, reps=3)
            err = float((outs[name].float() - outs["masked"].float()).abs().max())
            records.append(dict(variant=name, ms=ms, max_abs_diff_vs_masked=err))
            print(f"{name}: {ms:.1f} ms, max |diff| vs masked {err:.2e}", flush=True)
    base = records[0]["ms"]
    for r in records:
        r["vs_masked"] = base / r["ms"]
    command = "python scripts/bench_text_mask.py " + " ".join(sys.argv[1:])
    device = torch.cuda.get_device_name()
    meta = dict(device=device, command=command, shape=[1, H, S, D], valid_tokens=valid, records=records)
    lines = [f"# cuDNN attention with and without the padded-text key mask ({device})", "",
             f"Command: `{command}`. One call, (1, {H}, {S}, {D}) bf16, {valid} valid tokens.", "",
             "| variant | ms | speed-up over masked | max abs diff vs masked (valid rows) |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms']:.1f} | {r['vs_masked']:.2f}x | {r['max_abs_diff_vs_masked']:.1e} |" for r in records]
    write_gpu_results(args.out, "text_mask", device, meta, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
