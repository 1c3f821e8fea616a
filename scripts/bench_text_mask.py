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

from dit_sparse.bench.text_mask import run


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
    command = "python scripts/bench_text_mask.py " + " ".join(sys.argv[1:])
    print(run(args.video, args.text, args.valid_text, args.heads, args.out, command), end="")


if __name__ == "__main__":
    main()
