"""Cost of online head profiling against one sparse attention call, on a CUDA GPU.

For each shape: builds the grid's PatternBank (once per grid and generation, timed apart),
then times with CUDA events
- sparse:  one attention call under a cached plan (fixed density 0.2, a mix of spatial and
           temporal heads, so it includes the reordering pass of the temporal heads), timed
           per call over back-to-back calls (the host's launch work hidden, as in a pipeline),
- spatial: the same call with every head spatial (no reordering),
- profile: `profile_heads` alone (sampled rows, one block-mass launch over K in both layouts,
           recall of every candidate, the choice), adaptive and fixed; the GPU idles between
           its small launches here, so this includes their launch latency,
- added:   sparse, profile, sparse against sparse, sparse: what profiling adds to a call when
           the GPU has work queued, as in a pipeline where the host runs ahead of the GPU,
checks the cached call against the PyTorch reference on a slice, and checks that a cached
call never synchronises with the host (torch.cuda.set_sync_debug_mode("error")).

    python scripts/bench_profiling.py --shapes wan480,hunyuan720 --out docs/results
"""

from __future__ import annotations

import argparse
import sys

import torch

from dit_sparse.bench.profiling_cost import SHAPES, run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan480,hunyuan720", help=f"comma list of {list(SHAPES)}")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_profiling needs a CUDA GPU")
    names = args.shapes.split(",")
    if unknown := [n for n in names if n not in SHAPES]:
        sys.exit(f"unknown shape {unknown}; choose from {list(SHAPES)}")
    command = "python scripts/bench_profiling.py " + " ".join(sys.argv[1:])
    print(run(names, args.out, command))


if __name__ == "__main__":
    main()
