"""What the `dit-sparse` commands do once parsed (dit_sparse/cli.py builds the parser and imports
this module only when a command runs, since it pulls in torch and diffusers)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import generation as gen
from . import mag_ratios, step_cache
from .api import apply, transformers_of
from .compare import compare, preset_config
from .media import save_frames, video_suffix


def run(args, command_line: str) -> int:
    """Run the parsed command; a problem of the request raises generation.GenerationError."""
    if args.command == "info":
        return info()
    if args.command == "bench":
        return bench(args, command_line)
    if args.command == "calibrate":
        return calibrate_command(args, command_line)
    return generate_command(args, command_line) if args.command == "generate" else compare_command(args, command_line)


def _given(value, default):
    """The user's value when given (0 included, so that the checks see it), else the default."""
    return default if value is None else value


def _overrides(args) -> dict:
    return dict(dense_steps=args.dense_steps, dense_layers=args.dense_layers, refresh_every=args.refresh_every,
                density=args.density, recall=args.recall, cache_in_warmup=args.cache_in_warmup)


def _cache(args):
    """What --cache and --mag-ratios ask for, as `apply(cache=...)` takes it (None: no cache)."""
    if args.cache_in_warmup and args.cache == "none":
        raise gen.GenerationError("--cache-in-warmup lets a step cache serve warm-up steps: add --cache "
                                  "(first-block, mag or taylorseer).")
    if args.mag_ratios is not None and args.cache != "mag":
        raise gen.GenerationError(f"--mag-ratios is MagCache's: add --cache mag (got --cache {args.cache}).")
    if args.cache == "mag" and args.mag_ratios is not None:
        from diffusers.hooks import MagCacheConfig

        try:
            ratios = mag_ratios.load(args.mag_ratios)
        except ValueError as e:
            raise gen.GenerationError(f"--mag-ratios: {e}; write the file with dit-sparse calibrate.") from None
        return MagCacheConfig(mag_ratios=ratios, num_inference_steps=len(ratios))
    return None if args.cache == "none" else args.cache


def _model(args):
    """The pipeline folder of `args` and its pipeline's spec."""
    path, _ = gen.resolve_model(args.model)
    return path, gen.pipeline_spec(gen.pipeline_class_name(path))


def _setup(args, prompt: str, path: Path, spec: gen.PipelineSpec, cached: bool = False):
    """Load the pipeline, check the request, and return what a generation needs. `cached`: a
    step cache will be added (--compile then compiles the blocks so that its hooks wrap them)."""
    if getattr(args, "fps", 1) < 1:
        raise gen.GenerationError(f"--fps {args.fps} must be at least 1.")
    device, warning = gen.pick_device(args.device)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    dtype = gen.pick_dtype(args.dtype, device)
    defaults = gen.demo_defaults(path, device)
    request = gen.GenerationRequest(
        prompt=prompt, negative_prompt=args.negative_prompt,
        num_frames=_given(args.num_frames, defaults.get("num_frames")), height=_given(args.height, defaults.get("height")),
        width=_given(args.width, defaults.get("width")), steps=_given(args.steps, defaults.get("steps")),
        guidance_scale=_given(args.guidance_scale, defaults.get("guidance_scale")), seed=getattr(args, "seed", 0),
        max_sequence_length=_given(args.max_sequence_length, defaults.get("max_sequence_length")),
    )
    pipe = gen.load_pipeline(path, dtype=dtype, device=device, cpu_offload=args.cpu_offload)
    gen.check_request(pipe, spec, request)
    if args.compile:  # before the step cache, which then wraps the compiled blocks
        gen.compile_pipeline(pipe, hookable=cached)
    meta = dict(model=str(args.model or "bundled demo model"), path=str(path), pipeline=type(pipe).__name__,
                device=device, dtype=str(dtype).replace("torch.", ""), compiled=bool(args.compile))
    return pipe, request, meta


def generate_command(args, command_line: str) -> int:
    config = preset_config(args.preset, _overrides(args))
    path, spec = _model(args)
    output = Path(args.output) if args.output else Path("dit_sparse_output" + (".mp4" if spec.video else ".png"))
    gen.check_output(output, spec)
    cache = _cache(args)
    pipe, request, meta = _setup(args, args.prompt, path, spec, cached=cache is not None)
    try:
        handle = apply(pipe, config, cache=cache) if config is not None else None
        if config is None and cache is not None:  # the cache alone, with the model's own attention
            step_cache.add(pipe, cache, transformers_of(pipe))
    except step_cache.StepCacheError as e:
        raise gen.GenerationError(str(e)) from None
    result = gen.generate(pipe, spec, request, handle)
    save_frames(result.frames, output, fps=args.fps)
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(dict(
        meta, command=command_line, preset=args.preset, config=asdict(config) if config else None,
        cache=args.cache, mag_ratios=str(args.mag_ratios) if args.mag_ratios else None,
        request=asdict(request), wall_s=result.wall_s, transformer_s=result.transformer_s,
        transformer_s_per_step=result.transformer_s_per_step, steps=result.steps,
        frames=list(result.frames.shape), stats=result.stats,
        compile_s=gen.compile_seconds() if args.compile else None,
    ), indent=1))
    print(f"wrote {output} ({result.frames.shape[0]} frames, {result.frames.shape[2]}x{result.frames.shape[1]}) and {sidecar}")
    print(f"wall time {result.wall_s:.1f} s; transformer {result.transformer_s:.1f} s "
          f"({result.transformer_s_per_step:.2f} s/step over {result.steps} steps); preset {args.preset}"
          + ("" if args.cache == "none" else f", step cache {args.cache}"))
    print(gen.sparsity_summary(result.stats))
    if args.compile:
        print(f"compile time {gen.compile_seconds():.1f} s (within the wall time: the first steps compiled the blocks)")
    return 0


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise gen.GenerationError(f"--prompts {args.prompts} is not a file; give a text file with one prompt per line.")
        prompts += [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    if not prompts:
        raise gen.GenerationError(f"{args.command} needs at least one prompt: --prompt TEXT (repeatable) or --prompts FILE.")
    return prompts


def compare_command(args, command_line: str) -> int:
    prompts = _prompts(args)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    configs = {name: preset_config(name, _overrides(args)) for name in presets if name != "dense"}
    if not args.seeds:
        raise gen.GenerationError("--seeds needs at least one integer, e.g. 0,1.")
    cache = _cache(args)
    path, spec = _model(args)
    pipe, request, meta = _setup(args, prompts[0], path, spec, cached=cache is not None)
    suffix, problem = video_suffix()
    if problem is not None:  # say so now, not after the first clip
        print(f"note: {problem}; the side-by-side videos are written as GIF", file=sys.stderr)
    start = time.perf_counter()
    try:
        report = compare(pipe, spec, prompts=prompts, seeds=args.seeds, configs=configs, request=request,
                         out_dir=args.out, fps=args.fps, warmup=not args.no_warmup, video_suffix=suffix,
                         meta=dict(meta, command=command_line),
                         caches={args.cache: cache} if cache is not None else None)
    except step_cache.StepCacheError as e:
        raise gen.GenerationError(str(e)) from None
    print(f"compared {', '.join(report['summary'])} on {len(prompts)} prompt(s) x {len(args.seeds)} seed(s) "
          f"in {time.perf_counter() - start:.0f} s")
    for name, row in report["summary"].items():
        psnr = row["psnr"] if row["psnr"] == "inf" else f"{row['psnr']:.2f} dB"
        density = "n/a" if row["mean_density"] is None else f"{row['mean_density']:.3f}"
        print(f"  {name:9s} speed-up {row['speedup']:.2f}x  density {density}  PSNR {psnr}  SSIM {row['ssim']:.4f}")
    print(f"report: {args.out / 'report.md'}")
    if args.compile:
        print(f"compile time {gen.compile_seconds():.1f} s (mostly in the untimed warm-up generations)")
    return 0


def calibrate_command(args, command_line: str) -> int:
    """MagCache's magnitude ratios of the model over the prompts and seeds, written as JSON."""
    prompts = _prompts(args)
    if not args.seeds:
        raise gen.GenerationError("--seeds needs at least one integer, e.g. 0,1.")
    path, spec = _model(args)
    pipe, request, meta = _setup(args, prompts[0], path, spec, cached=True)  # MagCache calibrates through its hook
    if request.steps is None:  # the pipeline's default step count, stated so that every call has it
        request = replace(request, steps=gen.default_steps(pipe))
    calls = [dict(gen.call_kwargs(pipe, spec, replace(request, prompt=prompt, seed=seed)), output_type="latent")
             for prompt in prompts for seed in args.seeds]
    start = time.perf_counter()
    try:
        ratios = mag_ratios.calibrate_mag_cache(pipe, calls)
    except ValueError as e:
        raise gen.GenerationError(f"calibration failed: {e}.") from None
    seconds = time.perf_counter() - start
    about = {k: v for k, v in meta.items() if k != "path"}  # the model as named, not this machine's folder
    written = mag_ratios.save(args.output, ratios, pipe.transformer, **about, command=command_line, prompts=prompts,
                              seeds=args.seeds, request=asdict(request), seconds=round(seconds, 1))
    shown = ", ".join(f"{r:.3f}" for r in ratios["mag_ratios"])
    print(f"calibrated MagCache on {len(calls)} generation(s) of {request.steps} steps in {seconds:.0f} s")
    print(f"magnitude ratios: [{shown}]")
    print(f"wrote {written}; use it with --cache mag --mag-ratios {written}")
    return 0


def bench(args, command_line: str) -> int:
    from .bench import kernels as kernel_benchmark

    try:  # the benchmark records the command line as `command`; args.command stays the subcommand's name
        kernel_benchmark.run(argparse.Namespace(**dict(vars(args), command=command_line)))
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
