"""The transformer of a benchmark entry, built from its config with random weights, and the
inputs of its calls as its diffusers pipeline makes them; the token grid comes from the
family registry, as the runtime gets it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from dit_sparse.families import find_family
from dit_sparse.geometry import TokenGrid

from .specs import Spec, load_config, run_size, schedule

HUNYUAN_PROMPT_FRACTION = 4  # 1 / 4 of the padded text tokens are valid: 64 of 256


@dataclass(frozen=True)
class Workload:
    """The transformer calls of one denoising step, as the pipeline makes them."""

    calls: tuple[dict, ...]  # keyword arguments of each call of a step, without the timestep
    timestep_of: Callable[[torch.Tensor], torch.Tensor]  # a scheduler timestep -> the calls' `timestep`


@dataclass(frozen=True)
class ModelUnderTest:
    """A benchmark entry's transformer with its step's calls, token grid and 50 timesteps."""

    spec: Spec
    model: torch.nn.Module
    workload: Workload
    grid: TokenGrid
    timesteps: tuple[torch.Tensor, ...]  # as the calls take them
    num_layers: int  # self-attention layers that get sparse processors
    size: tuple[int, int, int]  # height, width, num_frames
    text_len: int

    @property
    def num_tokens(self) -> int:
        """Latent (video or image) tokens, text not counted."""
        return self.grid.num_video_tokens

    def two_timesteps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first timestep and the first later one the runtime tells apart from it (a new step)."""
        values = [float(t.max()) for t in self.timesteps]
        return self.timesteps[0], self.timesteps[next(i for i, v in enumerate(values) if v < values[0])]


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype):
    """Leave the model as `from_pretrained(torch_dtype=dtype)` does: floating-point state-dict
    entries in `dtype` except those of the class's `_keep_in_fp32_modules` (float32);
    non-persistent buffers keep the dtype they were built in."""
    keep = model._keep_in_fp32_modules or []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point():
            fp32 = any(m in name.split(".") for m in keep)
            tensor.data = tensor.data.to(torch.float32 if fp32 else dtype)


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer of `config` with random weights, built directly on `device` (default
    init runs there, in float32, then the cast); on the meta device, the architecture alone."""
    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    with torch.device(device):
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    if device.type == "meta":
        return model.eval().requires_grad_(False)
    model.to(device)  # anything a constructor made on the CPU explicitly
    cast_like_from_pretrained(model, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model.eval().requires_grad_(False)


def latent_shape(family: str, config: dict, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
    """(frames, height, width) of the VAE latent the pipeline makes: 8x spatial compression,
    4x temporal (video: (num_frames - 1) // 4 + 1 frames); CogVideoX1.5 pads the latent frames
    to a multiple of patch_size_t; Flux rounds to a multiple of 16 pixels (2x2 packing)."""
    if family == "flux":
        return 1, 2 * (height // 16), 2 * (width // 16)
    frames = (num_frames - 1) // 4 + 1
    if family == "cogvideox":
        frames += -frames % (config.get("patch_size_t") or 1)
    return frames, height // 8, width // 8


def make_workload(spec: Spec, model, config: dict, size, text_len: int, device, dtype) -> Workload:
    """The calls of one step (random inputs of the pipeline's shapes, seed 0) and the timestep
    conversion, as the family's pipeline makes them."""
    height, width, num_frames = size
    frames, rows, cols = latent_shape(spec.family, config, height, width, num_frames)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    if spec.family == "wan":
        latents = randn(1, config["in_channels"], frames, rows, cols)
        calls = [dict(hidden_states=latents, encoder_hidden_states=randn(1, text_len, config["text_dim"]))
                 for _ in ("cond", "uncond")]
        return Workload(tuple(calls), lambda t: t.to(device).expand(1))
    if spec.family == "hunyuan_video":
        valid = max(1, text_len // HUNYUAN_PROMPT_FRACTION)
        calls = [dict(
            hidden_states=randn(1, config["in_channels"], frames, rows, cols),
            encoder_hidden_states=randn(1, text_len, config["text_embed_dim"]),
            encoder_attention_mask=(torch.arange(text_len, device=device) < valid).long()[None],
            pooled_projections=randn(1, config["pooled_projection_dim"]),
            guidance=torch.tensor([6.0 * 1000.0], device=device, dtype=dtype),
        )]
        return Workload(tuple(calls), lambda t: t.to(device).expand(1).to(torch.float32))
    if spec.family == "cogvideox":
        from diffusers import CogVideoXPipeline

        pipe = SimpleNamespace(transformer=model, vae_scale_factor_spatial=8)
        rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(pipe, height, width, frames, device)
        calls = [dict(hidden_states=randn(2, frames, config["in_channels"], rows, cols),
                      encoder_hidden_states=randn(2, text_len, config["text_embed_dim"]), image_rotary_emb=rope)]
        return Workload(tuple(calls), lambda t: t.to(device).expand(2))
    from diffusers import FluxPipeline

    channels = config["in_channels"] // 4
    latents = FluxPipeline._pack_latents(randn(1, channels, rows, cols), 1, channels, rows, cols)
    calls = [dict(
        hidden_states=latents, encoder_hidden_states=randn(1, text_len, config["joint_attention_dim"]),
        pooled_projections=randn(1, config["pooled_projection_dim"]),
        txt_ids=torch.zeros(text_len, 3, device=device, dtype=dtype),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, rows // 2, cols // 2, device, dtype),
        guidance=torch.full([1], 3.5, device=device, dtype=torch.float32),
    )]
    return Workload(tuple(calls), lambda t: t.to(device).expand(1).to(dtype) / 1000)


def token_grid(model: torch.nn.Module, workload: Workload) -> TokenGrid:
    """The grid of the step's first call from the model's family (`ModelFamily.grid`), the one
    the runtime's step hook computes."""
    family = find_family(model)
    if family is None:
        raise ValueError(f"{type(model).__name__} is no supported family's transformer")
    grid = family.grid(model, workload.calls[0])
    if grid is None:
        raise ValueError(f"the {family.name} family gives no token grid for these inputs")
    return grid


def check_known_tokens(spec: Spec, grid: TokenGrid):
    """The grid of a real-size run holds the latent tokens the entry is known to have."""
    if spec.known_tokens is not None and grid.num_video_tokens != spec.known_tokens:
        raise RuntimeError(f"{spec.key}: {grid.num_video_tokens} tokens, expected {spec.known_tokens}")


def prepare_model(spec: Spec, tiny: bool, device: torch.device, dtype: torch.dtype,
                  progress: Callable[[str], None] = lambda msg: None) -> ModelUnderTest:
    """Build the entry's transformer (random weights from the current seed) and its step's
    inputs, and read the token grid and the timesteps off them; `progress` hears how it went."""
    config = load_config(spec, tiny)
    height, width, num_frames, text_len = run_size(spec, tiny)
    model = build_transformer(config, device, dtype)
    layers = len(find_family(model).self_attention(model))
    progress(f"built: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {layers} self-attention layers")
    if device.type == "cuda":
        progress(f"GPU memory: {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB weights, "
                 f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak while building (float32 init)")
        torch.cuda.reset_peak_memory_stats(device)
    workload = make_workload(spec, model, config, (height, width, num_frames), text_len, device, dtype)
    grid = token_grid(model, workload)
    if not tiny:
        check_known_tokens(spec, grid)
    progress(f"{spec.model} {height}x{width}x{num_frames}: latent tokens {grid.frames} x {grid.height} x {grid.width} "
             f"= {grid.num_video_tokens}")
    timesteps = tuple(workload.timestep_of(t) for t in schedule(spec, grid.num_video_tokens))
    return ModelUnderTest(spec, model, workload, grid, timesteps, layers, (height, width, num_frames), text_len)


def latent_tokens(spec: Spec) -> int:
    """Latent tokens of an entry at its real resolution: the family's grid of its inputs (made on
    the CPU) for the architecture built on the meta device, no weights."""
    config = load_config(spec)
    height, width, num_frames, text_len = run_size(spec)
    model = build_transformer(config, torch.device("meta"), torch.bfloat16)
    workload = make_workload(spec, model, config, (height, width, num_frames), text_len, torch.device("cpu"),
                             torch.bfloat16)
    return token_grid(model, workload).num_video_tokens
