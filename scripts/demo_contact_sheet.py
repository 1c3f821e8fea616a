"""Contact sheet of the demo model: one row per SHEET_PROMPTS prompt, frames evenly spaced.

Shows at a glance whether a trained demo pipeline follows its prompts (shape, colour, motion,
background).

    python scripts/demo_contact_sheet.py --model runs/demo --out runs/demo_sheet.png --device cuda
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from diffusers import WanPipeline

from dit_sparse.demo import SHEET_PROMPTS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved demo pipeline folder")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=33)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--columns", type=int, default=6, help="frames shown per prompt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def generate(pipe, prompt, args) -> np.ndarray:
    """(F, H, W, 3) floats in [0, 1]; the same seed for every prompt."""
    return pipe(
        prompt=prompt, negative_prompt="", num_frames=args.num_frames, height=args.resolution, width=args.resolution,
        num_inference_steps=args.steps, guidance_scale=args.guidance, max_sequence_length=32, output_type="np",
        generator=torch.Generator().manual_seed(args.seed),
    ).frames[0]


def main(argv=None):
    args = parse_args(argv)
    pipe = WanPipeline.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    fig, axes = plt.subplots(
        len(SHEET_PROMPTS), args.columns, figsize=(1.6 * args.columns, 1.95 * len(SHEET_PROMPTS)), squeeze=False,
        gridspec_kw=dict(left=0.01, right=0.99, top=0.97, bottom=0.02, wspace=0.04, hspace=0.35),
    )
    for row, prompt in enumerate(SHEET_PROMPTS):
        start = time.perf_counter()
        video = generate(pipe, prompt, args)
        print(f"{prompt}: {time.perf_counter() - start:.1f} s", flush=True)
        picks = np.linspace(0, len(video) - 1, args.columns).round().astype(int)
        for col, frame in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(video[frame].clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"frame {frame}", fontsize=7)
        axes[row, 0].set_title(prompt, fontsize=9, loc="left")
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
