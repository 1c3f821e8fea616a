"""The `dit-sparse` command: generate, compare, calibrate, bench, info.

    dit-sparse generate --prompt "a red circle moving left on a blue background" --output clip.mp4
    dit-sparse generate --prompt "a red circle moving left on a blue background" --cache mag --output clip.mp4
    dit-sparse compare --prompts examples/prompts.txt --seeds 0,1 --presets dense,balanced,fast --out report/
    dit-sparse calibrate --model DIR --prompts examples/prompts.txt --output mag_ratios.json
    dit-sparse bench --shapes wan480
    dit-sparse info

Without --model the bundled demo model is used. Mistakes in the request end with one
paragraph saying what to do, and exit code 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .bench_options import add_arguments as bench_arguments

# The parser imports neither torch nor diffusers, so --help is quick; dit_sparse.commands does the work.
EXIT_USAGE = 2
PRESET_CHOICES = ("dense", "quality", "balanced", "fast")  # compare.PRESET_NAMES, without importing torch
CACHE_CHOICES = ("none", "first-block", "mag", "taylorseer")  # step_cache.CACHE_NAMES, without importing torch
CACHE_HELP = (
    "a diffusers step cache to run with the sparse attention (default none): first-block (FirstBlockCache), mag "
    "(MagCache: its magnitude ratios are bundled for the demo model; other models need --mag-ratios from "
    "dit-sparse calibrate), taylorseer (TaylorSeer, lite mode). The cache never skips the dense warm-up steps"
)
PRESET_HELP = (
    "one of dense, quality, balanced, fast (default balanced). quality, balanced and fast accept more and more "
    "attention error after fewer dense steps, so each can go sparser than the one before; how sparse depends on the checkpoint (dit-sparse compare shows it). The speed-up needs a GPU: on "
    "the CPU the sparse attention runs the PyTorch reference, so every sparse preset is slower than dense there, "
    "and fast, with the most sparse heads, is the slowest"
)
LPIPS_NOTE = (
    "LPIPS is added when torchvision is installed and the AlexNet weights it loads are already on this machine "
    "(torch hub's checkpoints folder); nothing is downloaded, and the report says what is missing."
)


def _dense_steps(text: str) -> float | int:
    """A fraction ("0.2") or a count ("3") of dense warm-up steps."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a fraction like 0.2 nor a step count like 3") from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _model_options(p: argparse.ArgumentParser, media: bool = True):
    g = p.add_argument_group("model and generation")
    g.add_argument("--model", help="local diffusers pipeline folder or hub id (default: the bundled demo model)")
    g.add_argument("--negative-prompt")
    g.add_argument("--num-frames", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int, help="denoising steps")
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--max-sequence-length", type=int, help="text tokens (the pipeline's default if not given)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    g.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    g.add_argument("--cpu-offload", action="store_true", help="keep only the running component on the GPU")
    g.add_argument("--compile", action="store_true", help="compile the transformer's blocks (torch.compile, "
                   "fullgraph) as diffusers documents (with --cache: each block's forward, which the cache's hooks "
                   "then wrap); the first steps pay the compilation, whose time is printed")
    if media:
        g.add_argument("--fps", type=int, default=16, help="frames per second of written videos")


def _sparse_options(p: argparse.ArgumentParser):
    s = p.add_argument_group("sparse attention (overrides of the preset)")
    s.add_argument("--dense-steps", type=_dense_steps, help="first steps with full attention: fraction or count")
    s.add_argument("--dense-layers", type=int)
    s.add_argument("--refresh-every", type=int, help="re-profile every N sparse steps (0 = once)")
    s.add_argument("--density", type=float, help="fixed density per head (Sparse VideoGen style)")
    s.add_argument("--recall", type=float, help="attention mass a head's band must keep")
    c = p.add_argument_group("step cache")
    c.add_argument("--cache", choices=CACHE_CHOICES, default="none", help=CACHE_HELP)
    c.add_argument("--cache-in-warmup", action="store_true", default=None,
                   help="let the cache serve steps inside the dense warm-up too (default: held off there)")
    c.add_argument("--mag-ratios", type=Path, help="MagCache's magnitude ratios for this model: the JSON file "
                   "dit-sparse calibrate wrote (needed with --cache mag for any model but the demo model)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dit-sparse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate one video or image")
    _model_options(g)
    _sparse_options(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--preset", default="balanced", help=PRESET_HELP)
    g.add_argument("--output", help="file to write: .mp4 or .gif for video, .png for an image")

    c = sub.add_parser("compare", help="dense against sparse presets: speed, PSNR/SSIM, videos, plots",
                       description="Dense against sparse presets from the same prompts and seeds: speed-up, mean "
                       "density, PSNR and SSIM against dense, side-by-side videos and plots. " + LPIPS_NOTE)
    _model_options(c)
    _sparse_options(c)
    c.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    c.add_argument("--prompts", type=Path, help="text file, one prompt per line (e.g. examples/prompts.txt)")
    c.add_argument("--seeds", type=_seeds, default=[0])
    c.add_argument("--presets", default="dense,balanced,fast",
                   help=f"comma list of {', '.join(PRESET_CHOICES)}; --density and --recall apply to each sparse one")
    c.add_argument("--out", type=Path, default=Path("dit_sparse_compare"))
    c.add_argument("--no-warmup", action="store_true", help="skip the short untimed warm-up generations")

    m = sub.add_parser("calibrate", help="measure MagCache's magnitude ratios of a model (for --cache mag)",
                       description="Run the model dense with diffusers' MagCache in calibration mode (nothing skipped) "
                       "over the prompts and seeds, and write the per-step magnitude ratios, averaged, as JSON for "
                       "--mag-ratios. Calibrate with the step count and size you generate at (other step counts are "
                       "interpolated).")
    _model_options(m, media=False)
    m.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    m.add_argument("--prompts", type=Path, help="text file, one prompt per line (e.g. examples/prompts.txt)")
    m.add_argument("--seeds", type=_seeds, default=[0])
    m.add_argument("--output", type=Path, default=Path("mag_ratios.json"), help="JSON file to write")

    bench_help = "time the Triton kernels against cuDNN and FlexAttention (GPU)"
    bench_arguments(sub.add_parser("bench", help=bench_help, description=bench_help))
    sub.add_parser("info", help="versions, GPU and supported model families")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .commands import run
    from .generation import GenerationError

    command_line = "dit-sparse " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, command_line)
    except GenerationError as e:
        print(f"dit-sparse {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
