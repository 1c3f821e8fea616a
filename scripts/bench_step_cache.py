"""Sparse attention with diffusers' step caches on the full-size architectures (issue 21): each
cache's computed and skipped steps timed with its decisions forced (under the balanced preset, carried
over to stock dense and the fast preset); 50-step totals composed from the skip schedules the
quality study found on the bundled demo model (`--schedules FILE`); `--full-loop` adds real
50-step loops at the chosen settings on Wan2.1-1.3B 480p. See dit_sparse/bench/step_cache.py.
`--timings FILE` composes the totals anew, without a GPU, from the step times an earlier run measured
(its step_cache_<gpu>.json): for new schedules or --cache-in-warmup.

    python scripts/bench_step_cache.py --models wan1.3b-480 --schedules docs/results/step_cache_schedules.json --quality docs/results/quality_step_cache.json --full-loop --out docs/results
    python scripts/bench_step_cache.py --models wan1.3b-480 --tiny --out /tmp/sc     # CPU check
    python scripts/bench_step_cache.py --models wan1.3b-480,wan14b-720,hunyuan-720 --caches first-block --timings docs/results/step_cache_h200.json --schedules NEW/step_cache_schedules.json --quality NEW/quality_step_cache.json --out NEW
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dit_sparse.bench.specs import SPECS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="wan1.3b-480", help=f"comma list of {list(SPECS)}")
    ap.add_argument("--caches", default="first-block,mag,taylorseer")
    ap.add_argument("--schedules", default=None, help="JSON: cache -> {skipped: [bool per step], config: {...}, source}")
    ap.add_argument("--quality", default=None, help="the quality study's quality_step_cache.json: demo PSNR per row")
    ap.add_argument("--baseline", default="eager", choices=("eager", "compiled"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--full-loop", action="store_true")
    ap.add_argument("--loop-caches", default=None, help="comma list: the caches --full-loop runs (default: all)")
    ap.add_argument("--cache-in-warmup", action="store_true",
                    help="the caches also serve inside the dense warm-up (pass --schedules of a quality study run "
                         "with --cache-in-warmup)")
    ap.add_argument("--tiny", action="store_true", help="scaled-down models on the CPU: a test of the code path")
    ap.add_argument("--timings", type=Path, help="an earlier run's step_cache_<gpu>.json: compose from its step times, "
                                                 "timing nothing (no GPU needed)")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args(argv)
    command = "python scripts/bench_step_cache.py " + " ".join(sys.argv[1:] if argv is None else argv)
    names, caches = args.models.split(","), args.caches.split(",")
    if unknown := [n for n in names if n not in SPECS]:
        sys.exit(f"unknown model {unknown}; choose from {list(SPECS)}")
    from dit_sparse.bench.step_cache import CACHES, attach_quality, load_schedules, recompose, run_model, write_results

    if unknown := [c for c in caches if c not in CACHES]:
        sys.exit(f"unknown cache {unknown}; choose from {list(CACHES)}")
    schedules = load_schedules(args.schedules)
    quality = json.loads(Path(args.quality).read_text()) if args.quality else None

    def save(records, note=None) -> Path:
        """The records with their demo PSNR (--quality), written to --out."""
        if quality:
            attach_quality(records, quality)
        return write_results(args.out, records, command, note)

    if args.timings:
        if args.full_loop or args.tiny:
            sys.exit("--timings composes from recorded step times: it runs no loop and no model (drop --full-loop, --tiny)")
        timings = json.loads(args.timings.read_text())
        try:
            records = recompose(timings, names, caches, schedules, args.cache_in_warmup)
        except ValueError as error:
            sys.exit(str(error))
        note = (f"Composed without a GPU from the step times measured by `{timings['command']}` ({args.timings.name}), "
                "with new skip schedules; no real loop was run.")
        print(save(records, note).read_text(), flush=True)
        return
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench_step_cache needs a CUDA GPU (or --tiny for the CPU check)")
    from dit_sparse.bench.e2e import ProgressLog, bench_device

    device, dtype = bench_device(args.tiny)
    log, records = ProgressLog(), []
    for key in names:
        records += run_model(key, caches, schedules, args.baseline, args.repeats, args.tiny, args.full_loop, device,
                             dtype, log, args.loop_caches.split(",") if args.loop_caches else None,
                             cache_in_warmup=args.cache_in_warmup)
        md = save(records)  # after each model, so that a later failure keeps what ran
    print(md.read_text(), flush=True)


if __name__ == "__main__":
    main()
