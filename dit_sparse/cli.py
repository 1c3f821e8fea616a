"""The `dit-sparse` command: generate, compare, bench, info.

    dit-sparse generate --prompt "a red circle moving left on a blue background" --output clip.mp4
    dit-sparse compare --prompts prompts.txt --seeds 0,1 --presets dense,balanced,fast --out report/
    dit-sparse bench --shapes wan480
    dit-sparse info

Without --model the bundled demo model is used. Mistakes in the request end with one
paragraph saying what to do, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import generation as gen
from .compare import PRESET_NAMES, compare, preset_config
from .media import save_frames, video_suffix

EXIT_USAGE = 2


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


def _model_options(p: argparse.ArgumentParser):
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
    g.add_argument("--fps", type=int, default=16, help="frames per second of written videos")
    s = p.add_argument_group("sparse attention (overrides of the preset)")
    s.add_argument("--dense-steps", type=_dense_steps, help="first steps with full attention: fraction or count")
    s.add_argument("--dense-layers", type=int)
    s.add_argument("--refresh-every", type=int, help="re-profile every N sparse steps (0 = once)")
    s.add_argument("--density", type=float, help="fixed density per head (Sparse VideoGen style)")
    s.add_argument("--recall", type=float, help="attention mass a head's band must keep")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dit-sparse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate one video or image")
    _model_options(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--preset", default="balanced", help=f"one of {', '.join(PRESET_NAMES)}")
    g.add_argument("--output", help="file to write: .mp4 or .gif for video, .png for an image")

    c = sub.add_parser("compare", help="dense against sparse presets: speed, PSNR/SSIM, videos, plots")
    _model_options(c)
    c.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    c.add_argument("--prompts", type=Path, help="text file, one prompt per line")
    c.add_argument("--seeds", type=_seeds, default=[0])
    c.add_argument("--presets", default="dense,balanced,fast", help="comma list")
    c.add_argument("--out", type=Path, default=Path("dit_sparse_compare"))
    c.add_argument("--no-warmup", action="store_true", help="skip the short untimed warm-up generations")

    from .kernel_benchmark import parser as bench_parser

    bench_parser(sub.add_parser("bench", help="time the Triton kernels against cuDNN and FlexAttention (GPU)"))
    sub.add_parser("info", help="versions, GPU and supported model families")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command_line = "dit-sparse " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "info":
            return info()
        if args.command == "bench":
            return bench(args, command_line)
        return generate_command(args, command_line) if args.command == "generate" else compare_command(args, command_line)
    except gen.GenerationError as e:
        print(f"dit-sparse {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _overrides(args) -> dict:
    return dict(dense_steps=args.dense_steps, dense_layers=args.dense_layers, refresh_every=args.refresh_every,
                density=args.density, recall=args.recall)


def _model(args):
    """The pipeline folder of `args`, whether it is the demo model, and its pipeline's spec."""
    path, is_demo = gen.resolve_model(args.model)
    return path, is_demo, gen.pipeline_spec(gen.pipeline_class_name(path))


def _setup(args, prompt: str, path: Path, is_demo: bool, spec: gen.PipelineSpec):
    """Load the pipeline, check the request, and return what a generation needs."""
    device, warning = gen.pick_device(args.device)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    dtype = gen.pick_dtype(args.dtype, device)
    defaults = gen.DEMO_DEFAULTS if is_demo else {}
    request = gen.GenerationRequest(
        prompt=prompt, negative_prompt=args.negative_prompt,
        num_frames=args.num_frames or defaults.get("num_frames"), height=args.height or defaults.get("height"),
        width=args.width or defaults.get("width"), steps=args.steps or defaults.get("steps"),
        guidance_scale=args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale"),
        seed=getattr(args, "seed", 0), max_sequence_length=args.max_sequence_length or defaults.get("max_sequence_length"),
    )
    pipe = gen.load_pipeline(path, dtype=dtype, device=device, cpu_offload=args.cpu_offload)
    gen.check_request(pipe, spec, request)
    meta = dict(model=str(args.model or "bundled demo model"), path=str(path), pipeline=type(pipe).__name__,
                device=device, dtype=str(dtype).replace("torch.", ""))
    return pipe, request, meta


def generate_command(args, command_line: str) -> int:
    from .api import apply

    config = preset_config(args.preset, _overrides(args))
    path, is_demo, spec = _model(args)
    output = Path(args.output) if args.output else Path("dit_sparse_output" + (".mp4" if spec.video else ".png"))
    gen.check_output(output, spec)
    pipe, request, meta = _setup(args, args.prompt, path, is_demo, spec)
    handle = apply(pipe, config) if config is not None else None
    result = gen.generate(pipe, spec, request, handle)
    save_frames(result.frames, output, fps=args.fps)
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(dict(
        meta, command=command_line, preset=args.preset, config=asdict(config) if config else None,
        request=asdict(request), wall_s=result.wall_s, transformer_s=result.transformer_s,
        transformer_s_per_step=result.transformer_s_per_step, steps=result.steps,
        frames=list(result.frames.shape), stats=result.stats,
    ), indent=1))
    print(f"wrote {output} ({result.frames.shape[0]} frames, {result.frames.shape[2]}x{result.frames.shape[1]}) and {sidecar}")
    print(f"wall time {result.wall_s:.1f} s; transformer {result.transformer_s:.1f} s "
          f"({result.transformer_s_per_step:.2f} s/step over {result.steps} steps); preset {args.preset}")
    print(gen.sparsity_summary(result.stats))
    return 0


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise gen.GenerationError(f"--prompts {args.prompts} is not a file; give a text file with one prompt per line.")
        prompts += [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    if not prompts:
        raise gen.GenerationError("compare needs at least one prompt: --prompt TEXT (repeatable) or --prompts FILE.")
    return prompts


def compare_command(args, command_line: str) -> int:
    prompts = _prompts(args)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    configs = {name: preset_config(name, _overrides(args)) for name in presets if name != "dense"}
    if not args.seeds:
        raise gen.GenerationError("--seeds needs at least one integer, e.g. 0,1.")
    path, is_demo, spec = _model(args)
    pipe, request, meta = _setup(args, prompts[0], path, is_demo, spec)
    suffix, problem = video_suffix()
    if problem is not None:  # say so now, not after the first clip
        print(f"note: {problem}; the side-by-side videos are written as GIF", file=sys.stderr)
    start = time.perf_counter()
    report = compare(pipe, spec, prompts=prompts, seeds=args.seeds, configs=configs, request=request, out_dir=args.out,
                     fps=args.fps, warmup=not args.no_warmup, video_suffix=suffix,
                     meta=dict(meta, command=command_line))
    print(f"compared {', '.join(report['summary'])} on {len(prompts)} prompt(s) x {len(args.seeds)} seed(s) "
          f"in {time.perf_counter() - start:.0f} s")
    for name, row in report["summary"].items():
        psnr = row["psnr"] if row["psnr"] == "inf" else f"{row['psnr']:.2f} dB"
        density = "n/a" if row["mean_density"] is None else f"{row['mean_density']:.3f}"
        print(f"  {name:9s} speed-up {row['speedup']:.2f}x  density {density}  PSNR {psnr}  SSIM {row['ssim']:.4f}")
    print(f"report: {args.out / 'report.md'}")
    return 0


def bench(args, command_line: str) -> int:
    from . import kernel_benchmark

    args.command = command_line
    try:
        kernel_benchmark.run(args)
    except ValueError as e:
        raise gen.GenerationError(str(e)) from None
    return 0


def info() -> int:
    import diffusers
    import torch
    import triton

    from . import __version__
    from .families import supported

    print(f"dit-sparse {__version__}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, diffusers {diffusers.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    else:
        print("GPU: none visible (generation falls back to the CPU; Triton kernels need CUDA)")
    print(f"supported pipelines: {gen.supported_pipelines()}")
    print(f"supported transformer families: {supported()}")
    demo = "present" if (gen.DEMO_MODEL / "model_index.json").exists() else "missing"
    print(f"bundled demo model: {demo} ({gen.DEMO_MODEL})")
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
