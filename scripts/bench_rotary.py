"""Rotary embeddings: diffusers' PyTorch ops against our one-pass Triton kernel, on a GPU.

For each shape (one self-attention call's q and k, bf16, with the model's own float32 cos/sin
tables) it checks that the kernel's output equals diffusers' bit for bit, and times both for q
and k together (CUDA events, median):

- Wan2.1-1.3B at 480p and Wan2.1-14B at 720p: `WanRotaryPosEmbed`, against WanAttnProcessor's
  rotary (convention "wan");
- HunyuanVideo at 720p (video tokens) and FLUX.1-dev at 1024x1024 (512 text + 4096 image
  tokens): `HunyuanVideoRotaryPosEmbed` / `FluxPosEmbed`, against diffusers' `apply_rotary_emb`
  (convention "diffusers").

Writes DIR/rotary_<gpu>.json and .md.

    python scripts/bench_rotary.py --out docs/results
"""

from __future__ import annotations

import argparse
import sys

import torch

from dit_sparse.bench.rotary import SHAPES, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {list(SHAPES)}")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_rotary needs a CUDA GPU")
    names = args.shapes.split(",")
    if unknown := [n for n in names if n not in SHAPES]:
        sys.exit(f"unknown shape {unknown}; choose from {list(SHAPES)}")
    command = "python scripts/bench_rotary.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md, records = run(names, args.out, command)
    print(md)
    if not all(r["equal"] for r in records):
        sys.exit("the Triton rotary differs from diffusers' on the GPU")


if __name__ == "__main__":
    main()
