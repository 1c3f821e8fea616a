"""Every supported family on a CUDA GPU: the Triton path against the torch path and stock.

Builds the tiny pipelines of the family tests (dit_sparse/bench/tiny_pipelines: `build()` and
`call_kwargs()`) on the GPU and, per family:
- stock output;
- fixed density 1.0 (every head profiled, bands that cover every key) on the Triton kernels
  and on the PyTorch reference: both against stock;
- adaptive bands with a low acceptance threshold (recall 0.6, no warm-up: random weights
  attend almost uniformly, so the default threshold keeps every head dense) on Triton and
  torch: the head kinds chosen and the outputs against each other;
- Wan only: with `enable_model_cpu_offload()`.

    python scripts/check_families_gpu.py --out docs/results
"""

from __future__ import annotations

import argparse
import sys

import torch

from dit_sparse.bench.families_gpu import check_families
from dit_sparse.families import FAMILIES


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--families", default=",".join(f.name for f in FAMILIES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_families_gpu needs a CUDA GPU")
    command = "python scripts/check_families_gpu.py " + " ".join(sys.argv[1:])
    print(check_families(args.families.split(","), args.out, command), end="")


if __name__ == "__main__":
    main()
