"""Wan2.1-1.3B at 720p on several GPUs: diffusers' Ulysses context parallelism, dense and sparse.

    torchrun --nproc-per-node 2 scripts/bench_multigpu.py --out docs/results

Every rank builds the same transformer (the Wan2.1-T2V-1.3B config of dit_sparse/assets/transformer_configs,
random weights from one seed, broadcast from rank 0, bf16) and the same inputs, and calls it as
WanPipeline does (cond and uncond calls per step, 512 text tokens, 720x1280x81: 21 x 45 x 80 =
75,600 latent tokens), under `sdpa_kernel([cuDNN, ...], set_priority=True)` as bench_e2e.py.
Four runs, in this order on the same ranks:

- 1gpu-dense: stock processors, no parallelism (every rank alone on its GPU, at the same time);
- 1gpu-sparse: dit_sparse with the chosen config (default svg: Sparse VideoGen's settings);
- Ngpu-dense: `enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`, stock;
- Ngpu-sparse: the same with dit_sparse, whose processors hand the self-attention to the
  "dit_sparse" attention backend (after diffusers' all-to-all each rank holds the whole
  sequence for 12/N heads).

Times are per denoising step, the median of --repeats, the slowest rank's: the dense step, and
for sparse runs the profiling step, the cached step and a dense warm-up step through our
processors (as bench_e2e.py); 50-step totals are composed as there (n_dense x warm-up +
n_profile x profile + n_cached x cached), speed-ups are over 1gpu-dense.
Equality: the first call's output of two steps (step 1: the sparse runs profile; step 2: they
re-use those plans), N GPUs against one, sparse against sparse and (for comparison) dense against
dense: relative L2 error and maximum error, "equal" when the relative L2 error is within 2^-7
(bf16 keeps 8 significant bits). Plans: the fraction of
(layer, branch, head) whose N-GPU plan (keyed by global head) picks the one-GPU pattern.

Writes DIR/multigpu.json and DIR/multigpu.md. `--tiny` runs the same code on the CPU with gloo
(scaled-down model, float32, backend "torch"; start N processes as torchrun does) and writes
DIR/multigpu_tiny.*; its times mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from dit_sparse.bench.specs import SPARSE_CONFIGS


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--config", default="svg", choices=SPARSE_CONFIGS, help="the sparse settings (bench_e2e's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--tiny", action="store_true",
                    help="scaled-down model on the CPU with gloo: a test of the code path")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    given = sys.argv[1:] if argv is None else argv
    args.command = "torchrun --nproc-per-node N scripts/bench_multigpu.py " + " ".join(given)
    return args


def main(argv=None):
    args = parse_args(argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        sys.exit("bench_multigpu runs under torchrun: torchrun --nproc-per-node 2 scripts/bench_multigpu.py ...")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench_multigpu needs CUDA GPUs (or --tiny for the CPU check)")
    if (world := int(os.environ["WORLD_SIZE"])) < 2:
        sys.exit(f"bench_multigpu needs at least 2 processes (GPUs), got WORLD_SIZE={world}")
    from dit_sparse.bench.multigpu import MultiGpuOptions, run_and_write  # after the checks: it imports diffusers

    options = MultiGpuOptions(config=args.config, repeats=args.repeats, tiny=args.tiny, command=args.command)
    markdown = run_and_write(options, args.out, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    if markdown is not None:
        print(markdown, flush=True)


if __name__ == "__main__":
    main()
