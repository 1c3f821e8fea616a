"""End-to-end speed per denoising step of full-size DiT architectures, dense against sparse.

Builds each transformer from the published `transformer/config.json` of its checkpoint (copies
in dit_sparse/assets/transformer_configs/, source in their "_source" key) with random weights in bf16 on the GPU
(speed does not depend on weight values when the pattern densities are fixed), and calls it as
its diffusers pipeline does, with inputs of the pipeline's shapes and its scheduler's timesteps:

- Wan2.1 T2V (1.3B, 14B): two calls per step (cond, uncond), 512 text tokens x 4096;
- HunyuanVideo: one call (true CFG off), 256 text tokens of which 64 valid (a prompt), pooled
  768, guidance 6.0 embedded;
- CogVideoX1.5-5B: one call with batch 2 (uncond + cond), 226 text tokens; the 21 latent frames
  of 81 frames are padded to 22 (patch_size_t = 2) as the pipeline does;
- FLUX.1-dev: one call (guidance-distilled), 512 text tokens, guidance 3.5, packed 2x2 latents.

The transformer is bare (no pipeline, no cache context): `dit_sparse.apply` infers the step
from timestep changes and the CFG branch from the call's ordinal, so `dense_steps` is an int
count. Every run, dense or sparse, is inside `sdpa_kernel([cuDNN, flash, efficient, math],
set_priority=True)`: cuDNN attention wherever it takes the call. diffusers' "native" attention
backend and the CogVideoX processor call `torch.nn.functional.scaled_dot_product_attention`,
which that context governs; the script checks that every self-attention layer's call went
through it and reports, per self-attention shape, the backend that context picks.

Configs: "dense" (stock processors, before `apply`); "svg" (Sparse VideoGen's settings, see
../shared/BASELINES.md: Wan 20% steps dense, 3% layers, density 0.3; HunyuanVideo 10%, 3%,
0.25; CogVideoX 20%, 2.5%, 0.25; Flux uses Wan's; profiling every sparse step); the presets
"balanced" and "fast" at svg's density (their own dense steps, 1 dense layer, refresh every 5).
Fixed-density mode throughout, since random weights have no attention structure to adapt to.

Measured per model: the dense step; per sparse config, the profiling step (first sparse step:
every sparse layer profiles) and the cached step (plans re-used), with the config's dense
layers and no dense warm-up steps (configs that differ only in warm-up, refresh or recall,
which fixed-density mode does not use, share these measurements); the attention share of a
dense step (its self-attention SDPA calls timed alone at their shapes, over the step). The
real 81-frame latents hold 32,760 tokens (Wan 480p), 75,600 (Wan 720p), 118,800 (HunyuanVideo
720p, 129 frames), 44,880 (CogVideoX1.5 768x1360); Flux 4,096 (1024^2) and 16,384 (2048^2).
Timed steps: median of --repeats (1 for Wan2.1-14B and HunyuanVideo, 2 for CogVideoX), each
after a warm-up call. The 50-step total composes
    n_dense * dense + n_profile * profile + n_cached * cached,
n_profile being the sparse steps that re-profile (refresh_every 1: all; r: ceil(n_sparse / r);
0: one), and a dense warm-up step measured through our processors (HunyuanVideo's drop the
padded text keys instead of masking them, which cuDNN runs faster). `--trace` adds a
torch.profiler breakdown of one cached svg step (kernel time per category, GPU busy vs wall). `--full-loop` also runs Wan2.1-1.3B 480p's 50 steps for dense, svg and balanced
and compares the measured total with the composed one.

`--baselines eager,compiled` (or `--compiled`) also runs every model with its blocks compiled as
diffusers documents (`compile_repeated_blocks(fullgraph=True)`, Inductor), dense and sparse
alike; compiled rows' speed-ups are over compiled stock dense. Compiled runs also compare their
outputs with eager ones of the same config (`torch.compiler.set_stance("force_eager")` on the
same modules): the dense first call, and a sparse config's profiling-then-cached first call.

    python scripts/bench_e2e.py --models wan1.3b-480 --full-loop --out docs/results
    python scripts/bench_e2e.py --models hunyuan-720 --out docs/results
    python scripts/bench_e2e.py --models wan14b-720 --baselines compiled --repeats 1 --out docs/results
    python scripts/bench_e2e.py --models wan1.3b-480,flux-1024 --tiny --out /tmp/e2e   # CPU

Each model is one run of a few minutes on an H100; results accumulate in DIR/e2e_<gpu>.json
(e2e_h100, e2e_h200: one table per GPU model; records of the same model, resolution and config are
replaced) and DIR/e2e_<gpu>.md. `--tiny`
runs the same code on the CPU with scaled-down models, resolutions and blocks (backend
"torch") and writes DIR/e2e_tiny.*.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dit_sparse.bench.specs import DEFAULT_MODELS, SPECS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of {list(SPECS)}")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (fewer for the huge shapes)")
    ap.add_argument("--full-loop", action="store_true", help="also run the 50 steps of Wan2.1-1.3B 480p")
    ap.add_argument("--tiny", action="store_true", help="scaled-down models on the CPU: a test of the code path")
    ap.add_argument("--trace", action="store_true", help="torch.profiler trace of one cached svg step (GPU)")
    ap.add_argument("--compiled", action="store_true", help="also measure every model with its blocks compiled "
                    "(compile_repeated_blocks(fullgraph=True)), against compiled stock dense: --baselines eager,compiled")
    ap.add_argument("--baselines", default=None, help="comma list of eager,compiled: how the transformer runs "
                    "(default eager; compiled alone records the attention share from one eager call)")
    args = ap.parse_args(argv)
    command = "python scripts/bench_e2e.py " + " ".join(sys.argv[1:] if argv is None else argv)
    names = args.models.split(",")
    if unknown := [n for n in names if n not in SPECS]:
        sys.exit(f"unknown model {unknown}; choose from {list(SPECS)}")
    baselines = tuple(args.baselines.split(",")) if args.baselines else ("eager", "compiled") if args.compiled else ("eager",)
    if bad := [b for b in baselines if b not in ("eager", "compiled")]:
        sys.exit(f"unknown baseline {bad}; choose from ['eager', 'compiled']")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench_e2e needs a CUDA GPU (or --tiny for the CPU check)")
    from dit_sparse.bench.e2e import RunOptions, run_models  # after the checks: it imports diffusers
    from dit_sparse.bench.report import e2e_markdown

    options = RunOptions(repeats=args.repeats, full_loop=args.full_loop, tiny=args.tiny, trace=args.trace,
                         command=command, baselines=baselines)
    data = run_models(names, args.out, options)
    print(e2e_markdown(data), flush=True)


if __name__ == "__main__":
    main()
