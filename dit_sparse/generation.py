"""Load a diffusers pipeline from a folder or hub id, check a request against it, run one
generation and time it: the engine behind `dit-sparse generate` and `dit-sparse compare`.

Every problem a user can cause (unknown family, missing folder, unreachable hub id, a size or
frame count the model cannot take, out of GPU memory) raises `GenerationError` with a message
that says what to do.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .families import FAMILIES, dropin_pipelines
from .media import writer_missing

DEMO_MODEL = Path(__file__).parent / "assets" / "demo_model"
# How the bundled demo model was trained: its native clip size, and 32 text tokens (longer
# zero-padded text would shift its cross-attention).
DEMO_DEFAULTS = dict(num_frames=33, height=256, width=256, steps=20, guidance_scale=5.0, max_sequence_length=32)
DEMO_SETTINGS = "dit_sparse_demo.json"  # a demo model's own call settings, in its pipeline folder
VIDEO_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png",)


class GenerationError(Exception):
    """A problem with the user's request, with a message that says what to do."""


@dataclass(frozen=True)
class PipelineSpec:
    """What the CLI needs to know of a supported pipeline class."""

    family: str
    video: bool
    patch_multiple: int = 0  # spatial patch when the pipeline packs latents itself (Flux, Qwen: 2x2)

    def spatial_multiple(self, pipe) -> int:
        """Pixels per token side: height and width must be multiples of this."""
        vae = next(getattr(pipe, a) for a in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio",
                                             "vae_scale_factor") if hasattr(pipe, a))
        if self.patch_multiple:
            return vae * self.patch_multiple
        patch = getattr(pipe, "transformer_spatial_patch_size", None) or getattr(pipe, "patch_size", None)
        if patch is None:
            patch = pipe.transformer.config.patch_size
        return vae * (patch[-1] if isinstance(patch, (tuple, list)) else patch)

    def temporal_factor(self, pipe) -> int:
        """Frames must be k * factor + 1 (the VAE's causal temporal compression)."""
        return next(getattr(pipe, a) for a in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio")
                    if hasattr(pipe, a))


PIPELINES = {f.pipeline: PipelineSpec(f.title, f.video, f.patch_multiple) for f in FAMILIES}
"""The stock pipeline class of each family -> its spec (from the family registry)."""


def supported_pipelines() -> str:
    return ", ".join(f"{spec.family} ({name})" for name, spec in PIPELINES.items())


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    max_sequence_length: int | None = None


@dataclass
class GenerationResult:
    frames: np.ndarray  # (F, H, W, 3) float in [0, 1]; F = 1 for images
    wall_s: float
    transformer_s: float  # time inside the transformer forward(s)
    steps: int
    stats: dict | None = None
    skipped_steps: list[int] | None = None  # steps whose transformer calls a step cache served (None: unknown)
    skipped_call_fraction: float | None = None  # of the transformer calls, the share a step cache served

    @property
    def transformer_s_per_step(self) -> float:
        return self.transformer_s / max(1, self.steps)


def demo_defaults(path: Path, device: str = "cpu") -> dict:
    """The call settings of a demo model at `path` on `device`: its DEMO_SETTINGS file's (the training
    clip size; on the CPU its "cpu" entry, a smaller size the model was also trained at, so that a
    clip takes minutes there), DEMO_DEFAULTS for the bundled model without one, {} for other models."""
    settings = Path(path) / DEMO_SETTINGS
    if settings.exists():
        saved = json.loads(settings.read_text())
        cpu = saved.pop("cpu", {})
        return {**saved, **cpu} if str(device).startswith("cpu") else saved
    return dict(DEMO_DEFAULTS) if Path(path).resolve() == DEMO_MODEL.resolve() else {}


def resolve_model(model: str | None) -> tuple[Path, bool]:
    """The local pipeline folder for `model` (None = the bundled demo model) and whether it is
    the demo model. A hub id is fetched (from the local cache first)."""
    if model is None:
        if not (DEMO_MODEL / "model_index.json").exists():
            raise GenerationError(
                f"The bundled demo model is missing from this install (expected at {DEMO_MODEL}). "
                "Reinstall dit-sparse from a full checkout, or pass --model with a diffusers pipeline folder or hub id."
            )
        return DEMO_MODEL, True
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise GenerationError(
                f"{path} is a folder but not a diffusers pipeline (it has no model_index.json). Pass the folder "
                "that `pipe.save_pretrained(...)` or `huggingface-cli download` wrote."
            )
        return path, path.resolve() == DEMO_MODEL.resolve()
    if path.exists():
        raise GenerationError(f"--model {model} is a file; pass a diffusers pipeline folder or a hub id.")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model) or model.startswith((".", "/", "~")):
        raise GenerationError(f"The model folder {model} does not exist. Check the path, or pass a hub id like Wan-AI/Wan2.1-T2V-1.3B-Diffusers.")
    return _fetch_from_hub(model), False


def _fetch_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenerationError(
            f"There is no local folder {repo_id}, and the hub id {repo_id} could not be fetched from the Hugging Face "
            f"hub ({type(e).__name__}: {reason}). If this machine is offline, download it first on one with "
            f"internet access (`huggingface-cli download {repo_id} --local-dir DIR`), copy DIR here and pass --model DIR."
        ) from None


def pipeline_class_name(path: Path) -> str:
    """The stock diffusers pipeline class a folder was saved from (our Sparse* classes map to theirs)."""
    try:
        name = json.loads((path / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise GenerationError(f"{path}/model_index.json is unreadable ({e}); the folder is not a usable diffusers pipeline.") from None
    return dropin_pipelines().get(name, name)


def pipeline_spec(class_name: str) -> PipelineSpec:
    if class_name not in PIPELINES:
        raise GenerationError(
            f"{class_name} is not a pipeline dit_sparse supports. Supported families: {supported_pipelines()}."
        )
    return PIPELINES[class_name]


def pick_device(device: str | None) -> tuple[str, str | None]:
    """The device to run on, and a warning when a GPU was wanted but none is there."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return device, None if device == "cuda" else "no GPU found: running on the CPU, which is slow for full-size models"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "cpu", f"--device {device} asked for a GPU but none is available: falling back to the CPU (slow)"
    return device, None


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise GenerationError(f"--dtype {dtype} is not one of {', '.join(DTYPES)} (or auto).")
    return DTYPES[dtype]


@contextmanager
def quiet_loading():
    """Hide diffusers' and transformers' loading progress bars; each library's setting is restored after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was_enabled in enabled:
            if was_enabled:
                lib.enable_progress_bar()


def load_pipeline(path: Path, *, dtype: torch.dtype, device: str, cpu_offload: bool = False):
    """The stock pipeline of `path` on `device` (or with model CPU offload), loaded without progress bars."""
    import diffusers

    class_name = pipeline_class_name(path)
    pipeline_spec(class_name)
    cls = getattr(diffusers, class_name)
    try:
        with quiet_loading():
            pipe = cls.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise GenerationError(
            f"Could not load {class_name} from {path}: {str(e).strip().splitlines()[0]}. Check that the folder holds "
            "every component (weights included) that its model_index.json names."
        ) from None
    if cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(desc="denoising", leave=False)
    return pipe


def compile_blocks(transformer, hookable: bool = False, **compile_kwargs) -> None:
    """Compile a transformer's blocks as diffusers documents (`compile_repeated_blocks(fullgraph=True)`),
    or each block where a model declares no repeated blocks (CogVideoX, SD3). Compilation happens
    in the first calls after.

    `hookable`: compile each block's `forward` instead, before a step cache is added. diffusers'
    cache hooks replace a block's forward with their own code, which does not trace with
    fullgraph=True, so a cache added afterwards runs its code eagerly around the compiled
    blocks."""
    if hookable:
        for block in repeated_blocks(transformer):
            block.forward = torch.compile(block.forward, fullgraph=True, **compile_kwargs)
    elif getattr(transformer, "_repeated_blocks", None):
        transformer.compile_repeated_blocks(fullgraph=True, **compile_kwargs)
    else:
        for block in transformer.transformer_blocks:
            block.compile(fullgraph=True, **compile_kwargs)


def compile_pipeline(pipe, hookable: bool = False, **compile_kwargs) -> None:
    """`compile_blocks` for each transformer of the pipeline (Wan 2.2 A14B has two)."""
    for name in ("transformer", "transformer_2"):
        if getattr(pipe, name, None) is not None:
            compile_blocks(getattr(pipe, name), hookable, **compile_kwargs)


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process (dynamo's own account)."""
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    return float(values[names.index("_compile.compile_inner")]) if "_compile.compile_inner" in names else 0.0


def check_request(pipe, spec: PipelineSpec, request: GenerationRequest) -> None:
    """Raise GenerationError for a size or frame count the pipeline would silently change."""
    multiple = spec.spatial_multiple(pipe)
    for name in ("height", "width"):
        value = getattr(request, name)
        if value is not None and (value <= 0 or value % multiple):
            near = max(multiple, round(value / multiple) * multiple)
            raise GenerationError(
                f"--{name} {value} does not suit {type(pipe).__name__}: it must be a positive multiple of {multiple} "
                f"(VAE compression x patch size); try {near}."
            )
    if request.num_frames is not None:
        if not spec.video:
            if request.num_frames != 1:
                raise GenerationError(f"{type(pipe).__name__} makes images; drop --num-frames (or pass 1).")
        else:
            k = spec.temporal_factor(pipe)
            if request.num_frames < 1 or (request.num_frames - 1) % k:
                lo = max(1, (request.num_frames - 1) // k * k + 1)
                raise GenerationError(
                    f"--num-frames {request.num_frames} does not suit {type(pipe).__name__}: its VAE compresses time "
                    f"{k}x, so it needs {k}k+1 frames (e.g. {lo} or {lo + k})."
                )
    if request.steps is not None and request.steps < 1:
        raise GenerationError(f"--steps {request.steps} must be at least 1.")
    if request.max_sequence_length is not None and request.max_sequence_length < 1:
        raise GenerationError(f"--max-sequence-length {request.max_sequence_length} must be at least 1.")


def check_output(path: Path, spec: PipelineSpec) -> None:
    suffix = path.suffix.lower()
    allowed = VIDEO_SUFFIXES if spec.video else IMAGE_SUFFIXES
    if suffix not in allowed:
        what = "video" if spec.video else "image"
        raise GenerationError(f"--output {path}: this model makes a {what}; give a file ending in {' or '.join(allowed)}.")
    if (problem := writer_missing(path)) is not None:
        raise GenerationError(f"--output {problem}.")


class TransformerTimer:
    """Seconds spent inside the transformer forward(s) of a pipeline (synchronising the GPU at
    each call's start and end, so the figure is the transformer's own time)."""

    def __init__(self, pipe):
        self.seconds = 0.0
        self._start = None
        self._handles = []
        for name in ("transformer", "transformer_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))

    def _sync(self, module):
        param = next(module.parameters(), None)
        if param is not None and param.is_cuda:
            torch.cuda.synchronize(param.device)

    def _pre(self, module, args):
        self._sync(module)
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self._sync(module)
        self.seconds += time.perf_counter() - self._start

    def close(self):
        for h in self._handles:
            h.remove()


def call_kwargs(pipe, spec: PipelineSpec, request: GenerationRequest) -> dict:
    """The pipeline call for `request`: only the arguments it sets and the pipeline accepts."""
    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(prompt=request.prompt, output_type="np", generator=torch.Generator("cpu").manual_seed(request.seed))
    optional = dict(negative_prompt=request.negative_prompt, height=request.height, width=request.width,
                    num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                    max_sequence_length=request.max_sequence_length)
    if spec.video:
        optional["num_frames"] = request.num_frames
    kwargs.update({k: v for k, v in optional.items() if v is not None and k in params})
    return kwargs


def default_steps(pipe) -> int:
    """The pipeline's own default number of denoising steps (its call's `num_inference_steps`)."""
    return inspect.signature(pipe.__call__).parameters["num_inference_steps"].default


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's blocks: the modules of the classes it declares repeated, else its
    `transformer_blocks` (or `blocks`)."""
    repeated = set(getattr(transformer, "_repeated_blocks", None) or ())
    blocks = [m for m in transformer.modules() if type(m).__name__ in repeated]
    return blocks or list(getattr(transformer, "transformer_blocks", None) or getattr(transformer, "blocks", None) or ())


def last_block(transformer: torch.nn.Module) -> torch.nn.Module | None:
    """The transformer's last block: a step cache that serves a call from its cache skips it."""
    blocks = repeated_blocks(transformer)
    return blocks[-1] if blocks else None


class ComputedCalls:
    """Per transformer call of a generation, whether its last block ran: a step cache
    (FirstBlockCache, MagCache, TaylorSeer) skips the blocks of a call it serves from its cache.
    Counts with a cache alone too, where dit_sparse's statistics see nothing. The hook sits on
    the block's first child with weights: diffusers' cache hooks replace the block's forward, so
    the block itself is always called, its children only when it computes."""

    def __init__(self, pipe):
        self.calls: list[bool] = []
        self._handles = []
        for name in ("transformer", "transformer_2"):
            module = getattr(pipe, name, None)
            block = last_block(module) if module is not None else None
            inner = next((m for m in block.children() if next(m.parameters(), None) is not None), None) if block else None
            if inner is not None:
                self._handles.append(module.register_forward_pre_hook(self._call))
                self._handles.append(inner.register_forward_pre_hook(self._ran))

    def _call(self, module, args):
        self.calls.append(False)

    def _ran(self, module, args):
        if self.calls:
            self.calls[-1] = True

    def skipped_fraction(self) -> float | None:
        return 1.0 - sum(self.calls) / len(self.calls) if self.calls else None

    def skipped_steps(self, steps: int) -> list[int] | None:
        """The steps (of `steps`, each the same number of calls) none of whose calls ran the last block."""
        if not self.calls or steps < 1 or len(self.calls) % steps:
            return None
        per = len(self.calls) // steps
        return [i for i in range(steps) if not any(self.calls[i * per:(i + 1) * per])]

    def close(self):
        for h in self._handles:
            h.remove()


def generate(pipe, spec: PipelineSpec, request: GenerationRequest, handle=None) -> GenerationResult:
    """Run one generation; `handle` (from dit_sparse.apply) is reset first and its stats kept."""
    kwargs = call_kwargs(pipe, spec, request)
    if handle is not None:
        handle.reset()
    timer, computed = TransformerTimer(pipe), ComputedCalls(pipe)
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            output = pipe(**kwargs)
        except torch.OutOfMemoryError:
            raise GenerationError(
                "The GPU ran out of memory. Try --cpu-offload (keeps only the running component on the GPU), a "
                "smaller --height/--width or fewer --num-frames."
            ) from None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    finally:
        timer.close()
        computed.close()
    frames = output.frames[0] if spec.video else output.images[0][None]
    frames = np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0)
    steps = len(pipe.scheduler.timesteps) // max(1, getattr(pipe.scheduler, "order", 1))
    stats = handle.stats().as_dict() if handle is not None and handle.enabled else None
    return GenerationResult(frames=frames, wall_s=wall, transformer_s=timer.seconds, steps=steps, stats=stats,
                            skipped_steps=computed.skipped_steps(steps), skipped_call_fraction=computed.skipped_fraction())


def sparsity_summary(stats: dict | None) -> str:
    """One line: mean density, head kinds, profiles and calls."""
    if not stats:
        return "sparsity: off (dense attention everywhere)"
    kinds = {"spatial": 0, "temporal": 0, "dense": 0}
    for layer in stats["layers"].values():
        for branch in layer.values():
            for row in branch["kinds"]:
                for kind in row:
                    kinds[kind] += 1
    total = sum(kinds.values())
    mix = ", ".join(f"{100 * n / total:.0f}% {k}" for k, n in kinds.items()) if total else "no sparse layer ran"
    density = stats["mean_density"]
    density_text = f"{density:.3f}" if density is not None else "n/a"
    skipped = {step for steps in stats.get("skipped_steps", {}).values() for step in steps}
    cache = f"; the step cache skipped (some of) the sparse calls of {len(skipped)} steps" if skipped else ""
    return (f"sparsity: mean density {density_text} over {stats['sparse_calls']} sparse attention calls "
            f"({stats['dense_calls']} dense); heads: {mix}; {stats['num_profiles']} profiles{cache}")
