"""How fast the position-major reordering pass of temporal heads runs, against a plain copy.

At Wan2.1-1.3B 480p, (1, 12, 32760, 128) bf16 q, k and v laid out as the processors hand them
over (B, S, H, D memory, viewed as B, H, S, D), every head flagged: times
`reorder_flagged_heads` over q, k and v for rows per program x warps, and `torch.clone` of the
same three tensors (the copy bandwidth the pass can hope for). Checks each variant against
the PyTorch reference, prints a table, writes reorder_<gpu>.json / .md into --out.

    python scripts/bench_reorder.py --out docs/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dit_sparse.bench.reorder import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_reorder needs a CUDA GPU")
    command = "python scripts/bench_reorder.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(run(args.out, command))


if __name__ == "__main__":
    main()
