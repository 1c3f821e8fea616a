"""End-to-end speed per denoising step of full-size DiT architectures, dense against sparse.

Builds each transformer from the published `transformer/config.json` of its checkpoint (copies
in scripts/configs/e2e/, source in their "_source" key) with random weights in bf16 on the GPU
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

    python scripts/bench_e2e.py --models wan1.3b-480 --full-loop --out docs/results
    python scripts/bench_e2e.py --models hunyuan-720 --out docs/results
    python scripts/bench_e2e.py --models wan1.3b-480,flux-1024 --tiny --out /tmp/e2e   # CPU

Each model is one run of a few minutes on an H100; results accumulate in DIR/e2e_<gpu>.json
(e2e_h100, e2e_h200: one table per GPU model; records of the same model, resolution and config are
replaced) and DIR/e2e_<gpu>.md. `--tiny`
runs the same code on the CPU with scaled-down models, resolutions and blocks (backend
"torch") and writes DIR/e2e_tiny.*.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.families import find_family
from dit_sparse.timing import cuda_time, gpu_tag

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "e2e"
STEPS = 50
SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
SPARSE_CONFIGS = ("svg", "balanced", "fast")
FULL_LOOP_CONFIGS = ("dense", "svg", "balanced")
LOOP_TOLERANCE = 0.03
HUNYUAN_PROMPT_FRACTION = 4  # 1 / 4 of the padded text tokens are valid: 64 of 256

WAN_SVG = (0.2, 0.03, 0.3)  # SVG's dense step fraction, dense layer fraction, density


@dataclass(frozen=True)
class Spec:
    """One benchmark entry: a checkpoint's architecture at one resolution."""

    key: str  # name on the command line
    model: str  # name in the records
    family: str  # "wan", "hunyuan_video", "cogvideox", "flux"
    config: str  # file in scripts/configs/e2e
    height: int
    width: int
    num_frames: int  # 1 for images
    text_len: int
    svg: tuple[float, float, float]
    max_repeats: int | None = None  # fewer timed steps for the huge shapes
    flow_shift: float | None = None  # Wan's scheduler shift at this resolution
    full_loop: bool = False  # `--full-loop` runs the 50 steps of this entry


SPECS = {s.key: s for s in (
    Spec("wan1.3b-480", "Wan2.1-T2V-1.3B", "wan", "wan2.1-t2v-1.3b.json", 480, 832, 81, 512, WAN_SVG,
         flow_shift=3.0, full_loop=True),
    Spec("wan1.3b-720", "Wan2.1-T2V-1.3B", "wan", "wan2.1-t2v-1.3b.json", 720, 1280, 81, 512, WAN_SVG, flow_shift=5.0),
    Spec("wan14b-720", "Wan2.1-T2V-14B", "wan", "wan2.1-t2v-14b.json", 720, 1280, 81, 512, WAN_SVG,
         max_repeats=1, flow_shift=5.0),
    Spec("hunyuan-720", "HunyuanVideo", "hunyuan_video", "hunyuanvideo.json", 720, 1280, 129, 256, (0.1, 0.03, 0.25),
         max_repeats=1),
    Spec("cogvideox-768", "CogVideoX1.5-5B", "cogvideox", "cogvideox1.5-5b.json", 768, 1360, 81, 226, (0.2, 0.025, 0.25),
         max_repeats=2),
    Spec("flux-1024", "FLUX.1-dev", "flux", "flux.1-dev.json", 1024, 1024, 1, 512, WAN_SVG),
    Spec("flux-2048", "FLUX.1-dev", "flux", "flux.1-dev.json", 2048, 2048, 1, 512, WAN_SVG),
)}
DEFAULT_MODELS = "wan1.3b-480,wan14b-720,hunyuan-720,cogvideox-768,flux-1024,flux-2048"
KNOWN_TOKENS = {"wan1.3b-480": 32760, "wan1.3b-720": 75600, "wan14b-720": 75600, "hunyuan-720": 118800}

TINY = {  # config overrides of --tiny: a few layers, 2 heads x 16, small embeddings
    "wan": dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=32, num_layers=3, text_dim=32, rope_max_seq_len=32),
    "hunyuan_video": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
                          num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=[4, 6, 6]),
    "cogvideox": dict(num_attention_heads=2, attention_head_dim=16, num_layers=3, text_embed_dim=32, time_embed_dim=8,
                      max_text_seq_length=8),
    "flux": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2, in_channels=16,
                 joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6]),
}
TINY_TEXT_LEN = 8
TINY_ENGINE = dict(block_size=16, num_sampled_queries=16, backend="torch")

TARGETS = {"wan1.3b-480": 1.6, "wan1.3b-720": 2.2, "wan14b-720": 2.2, "hunyuan-720": 2.6}
SVG_REPORTED = {"wan1.3b-480": "1.32x", "wan1.3b-720": "1.51x", "wan14b-720": "1.51x",
                "hunyuan-720": "1.91x (repo), 2.33x (paper)", "cogvideox-768": "2.28x"}

_START = time.perf_counter()


def log(msg: str):
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", flush=True)


# ---- shapes ----------------------------------------------------------------------------------

def load_config(spec: Spec, tiny: bool = False) -> dict:
    config = json.loads((CONFIG_DIR / spec.config).read_text())
    if tiny:
        config.update(TINY[spec.family])
    return config


def run_size(spec: Spec, tiny: bool = False) -> tuple[int, int, int, int]:
    """(height, width, num_frames, text tokens) a run uses: the entry's, or for --tiny an eighth of
    its height and width (multiples of 16), 9 frames of video and 8 text tokens."""
    if not tiny:
        return spec.height, spec.width, spec.num_frames, spec.text_len
    height, width = (max(16, round(n / 128) * 16) for n in (spec.height, spec.width))
    return height, width, min(spec.num_frames, 9), TINY_TEXT_LEN


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


def token_grid(family: str, config: dict, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
    """(frames, rows, columns) of the latent tokens after patching (Flux: 2x2 packing)."""
    frames, rows, cols = latent_shape(family, config, height, width, num_frames)
    if family == "wan":
        p_t, p_h, p_w = config["patch_size"]
    elif family == "flux":
        p_t, p_h, p_w = 1, 2, 2
    else:
        p_t, p_h, p_w = config.get("patch_size_t") or 1, config["patch_size"], config["patch_size"]
    return frames // p_t, rows // p_h, cols // p_w


def tokens(key: str) -> int:
    """Latent (video or image) tokens of a benchmark entry at its real resolution."""
    spec = SPECS[key]
    return math.prod(token_grid(spec.family, load_config(spec), spec.height, spec.width, spec.num_frames))


def schedule(spec: Spec, num_tokens: int, steps: int = STEPS) -> torch.Tensor:
    """The timesteps of the family's scheduler as its pipeline sets them."""
    from diffusers import (CogVideoXDPMScheduler, FlowMatchEulerDiscreteScheduler,
                           UniPCMultistepScheduler)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if spec.family == "wan":
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=spec.flow_shift, num_train_timesteps=1000)
        scheduler.set_timesteps(steps)
    elif spec.family == "hunyuan_video":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    elif spec.family == "cogvideox":
        scheduler = CogVideoXDPMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                          prediction_type="v_prediction", snr_shift_scale=1.0)
        scheduler.set_timesteps(steps)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        mu = calculate_shift(num_tokens, 256, 4096, 0.5, 1.15)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.timesteps[:steps]


# ---- model and inputs ------------------------------------------------------------------------

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
    init runs there, in float32, then the cast)."""
    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    with torch.device(device):
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    model.to(device)  # anything a constructor made on the CPU explicitly
    cast_like_from_pretrained(model, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model.eval().requires_grad_(False)


def make_inputs(spec: Spec, model, config: dict, size, text_len: int, device, dtype):
    """The keyword arguments of each transformer call of one step (no timestep) and a function
    turning a scheduler timestep into the call's `timestep` argument, as the pipeline makes them."""
    height, width, num_frames = size
    frames, rows, cols = latent_shape(spec.family, config, height, width, num_frames)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    if spec.family == "wan":
        latents = randn(1, config["in_channels"], frames, rows, cols)
        calls = [dict(hidden_states=latents, encoder_hidden_states=randn(1, text_len, config["text_dim"]))
                 for _ in ("cond", "uncond")]
        return calls, lambda t: t.to(device).expand(1)
    if spec.family == "hunyuan_video":
        valid = max(1, text_len // HUNYUAN_PROMPT_FRACTION)
        calls = [dict(
            hidden_states=randn(1, config["in_channels"], frames, rows, cols),
            encoder_hidden_states=randn(1, text_len, config["text_embed_dim"]),
            encoder_attention_mask=(torch.arange(text_len, device=device) < valid).long()[None],
            pooled_projections=randn(1, config["pooled_projection_dim"]),
            guidance=torch.tensor([6.0 * 1000.0], device=device, dtype=dtype),
        )]
        return calls, lambda t: t.to(device).expand(1).to(torch.float32)
    if spec.family == "cogvideox":
        from diffusers import CogVideoXPipeline

        pipe = SimpleNamespace(transformer=model, vae_scale_factor_spatial=8)
        rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(pipe, height, width, frames, device)
        calls = [dict(hidden_states=randn(2, frames, config["in_channels"], rows, cols),
                      encoder_hidden_states=randn(2, text_len, config["text_embed_dim"]), image_rotary_emb=rope)]
        return calls, lambda t: t.to(device).expand(2)
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
    return calls, lambda t: t.to(device).expand(1).to(dtype) / 1000


# ---- timing ----------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Seconds of fn() from a synchronised start to a synchronised end."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def sdpa_priority():
    """cuDNN attention wherever it takes the call, else the next backend of SDPA_ORDER."""
    return sdpa_kernel(SDPA_ORDER, set_priority=True)


@dataclass
class SdpaCall:
    """What one scaled_dot_product_attention call got, to replay it alone."""

    q: tuple
    k: tuple
    v: tuple  # (shape, stride) each
    dtype: torch.dtype
    device: torch.device
    mask: torch.Tensor | None
    is_causal: bool
    scale: float | None

    @property
    def key(self):
        mask = None if self.mask is None else (tuple(self.mask.shape), self.mask.dtype)
        return self.q, self.k, self.v, self.dtype, mask, self.is_causal, self.scale

    def is_self_attention(self, num_tokens: int, text_len: int) -> bool:
        """Queries and keys of one sequence holding every latent token (text refiners attend
        the text alone, cross-attention has other keys)."""
        length = self.q[0][-2]
        return length == self.k[0][-2] and length >= num_tokens and length > text_len

    def run(self):
        """A function running this call alone on random data of the same shapes and strides."""
        q, k, v = (torch.empty_strided(*s, dtype=self.dtype, device=self.device).normal_()
                   for s in (self.q, self.k, self.v))
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.is_causal,
                                                      scale=self.scale)


@contextlib.contextmanager
def recording_sdpa():
    """Record every torch.nn.functional.scaled_dot_product_attention call made inside."""
    seen, original = [], F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        seen.append(SdpaCall(*((tuple(t.shape), t.stride()) for t in (query, key, value)), query.dtype,
                             query.device, attn_mask, is_causal, scale))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = spy
    try:
        yield seen
    finally:
        F.scaled_dot_product_attention = original


def first_backend(call: SdpaCall) -> str:
    """The first backend of SDPA_ORDER that runs this call: the one `sdpa_priority` picks."""
    fn = call.run()
    for backend in SDPA_ORDER:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with sdpa_kernel([backend]):
                    fn()
            return backend.name
        except RuntimeError:
            continue
    return "none"


def op_seconds(fn, device, repeats: int = 5) -> float:
    """Median seconds of fn() alone (CUDA events on the GPU), after a warm-up."""
    if device.type == "cuda":
        return cuda_time(fn) / 1000.0
    fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


# ---- configs and the 50-step total -----------------------------------------------------------

def sparse_configs(spec: Spec, num_layers: int, tiny: bool = False, steps: int = STEPS) -> dict[str, SparseAttentionConfig]:
    """svg and the presets, dense warm-up as a step count (the bare transformer's step count is unknown)."""
    step_fraction, layer_fraction, density = spec.svg
    extra = TINY_ENGINE if tiny else {}
    configs = {"svg": SparseAttentionConfig(
        dense_steps=round(step_fraction * steps), dense_layers=max(1, round(layer_fraction * num_layers)),
        refresh_every=1, density=density, **extra,
    )}
    for name in ("balanced", "fast"):
        preset = SparseAttentionConfig.preset(name, density=density, **extra)
        configs[name] = dataclasses.replace(preset, dense_steps=preset.num_dense_steps(steps))
    return configs


def measurement_config(config: SparseAttentionConfig) -> SparseAttentionConfig:
    """The config the per-step times are measured with: no warm-up steps, plans never refreshed,
    so a step right after a reset profiles and every later one re-uses the plans. In
    fixed-density mode `recall` plays no part, so it is set to the default: configs that differ
    only in it share one measurement."""
    fields = dict(dense_steps=0, refresh_every=0)
    if config.density is not None:
        fields["recall"] = SparseAttentionConfig.recall
    return dataclasses.replace(config, **fields)


def profile_steps(num_sparse: int, refresh_every: int) -> int:
    """How many of `num_sparse` sparse steps profile: the first, then every `refresh_every`."""
    if num_sparse <= 0:
        return 0
    if refresh_every == 0:
        return 1
    return math.ceil(num_sparse / refresh_every)


def compose(config: SparseAttentionConfig, dense_s: float, profile_s: float, cached_s: float, steps: int = STEPS) -> dict:
    """The total of `steps` steps from the per-step times."""
    n_dense = config.num_dense_steps(steps)
    n_profile = profile_steps(steps - n_dense, config.refresh_every)
    n_cached = steps - n_dense - n_profile
    total = n_dense * dense_s + n_profile * profile_s + n_cached * cached_s
    return dict(n_dense_steps=n_dense, n_profile_steps=n_profile, n_cached_steps=n_cached, total_sparse_s=total)


# ---- one model -------------------------------------------------------------------------------

def measure_warmup(handle, step, t, config: SparseAttentionConfig, layers: int, repeats, device) -> float:
    """A dense warm-up step through our processors (every layer dense; HunyuanVideo's attend the
    valid tokens unmasked, Wan's apply the one-pass RoPE): median seconds over `repeats`, after
    an untimed step. Leaves the handle on that all-dense config."""
    handle.set_config(dataclasses.replace(measurement_config(config), dense_layers=layers))
    step(t)
    return statistics.median(timed(lambda: step(t), device) for _ in range(repeats))


def measure_sparse(handle, step, first_call, t0, t1, repeats, device, expected_profiles) -> dict:
    """Profiling step (after a reset) and cached step (the next), median over `repeats`."""
    handle.reset()
    first_call(t0)  # warm-up: kernel compilation and the grid's pattern bank (kept across resets)
    profile, cached = [], []
    for _ in range(repeats):
        handle.reset()
        profile.append(timed(lambda: step(t0), device))
        cached.append(timed(lambda: step(t1), device))
    stats = handle.stats()
    if stats.num_profiles != expected_profiles:
        raise RuntimeError(f"a profiling step profiled {stats.num_profiles} times, expected {expected_profiles}")
    return dict(profile_s=statistics.median(profile), cached_s=statistics.median(cached),
                mean_density=stats.mean_density)


def run_model(spec: Spec, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    start = time.perf_counter()

    def progress(msg):
        log(f"{spec.key} (+{time.perf_counter() - start:.0f}s): {msg}")

    config = load_config(spec, args.tiny)
    height, width, num_frames, text_len = run_size(spec, args.tiny)
    grid = token_grid(spec.family, config, height, width, num_frames)
    num_tokens = math.prod(grid)
    if not args.tiny and spec.key in KNOWN_TOKENS and num_tokens != KNOWN_TOKENS[spec.key]:
        raise RuntimeError(f"{spec.key}: {num_tokens} tokens, expected {KNOWN_TOKENS[spec.key]}")
    progress(f"{spec.model} {height}x{width}x{num_frames}: latent tokens {grid[0]} x {grid[1]} x {grid[2]} = {num_tokens}")
    repeats = min(args.repeats, spec.max_repeats or args.repeats)

    model = build_transformer(config, device, dtype)
    layers = len(find_family(model).self_attention(model))
    progress(f"built: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {layers} self-attention layers")
    if device.type == "cuda":
        progress(f"GPU memory: {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB weights, "
                 f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak while building (float32 init)")
        torch.cuda.reset_peak_memory_stats(device)
    calls, timestep_of = make_inputs(spec, model, config, (height, width, num_frames), text_len, device, dtype)
    timesteps = [timestep_of(t) for t in schedule(spec, num_tokens)]
    values = [float(t.max()) for t in timesteps]
    t0, t1 = timesteps[0], timesteps[next(i for i, v in enumerate(values) if v < values[0])]

    def step(t):
        for kwargs in calls:
            model(**kwargs, timestep=t, return_dict=False)

    def first_call(t):
        return model(**calls[0], timestep=t, return_dict=False)[0]

    def loop():
        for t in timesteps:
            step(t)

    loops = {}
    with torch.no_grad(), sdpa_priority():
        with recording_sdpa() as seen:
            finite = bool(torch.isfinite(first_call(t0)).all())
        dense_s = statistics.median(timed(lambda: step(t0), device) for _ in range(repeats))
        progress(f"dense step {dense_s:.3f} s ({len(calls)} call(s), median of {repeats})")

        self_calls = [c for c in seen if c.is_self_attention(num_tokens, text_len)]
        if len(self_calls) != layers:
            raise RuntimeError(f"{len(self_calls)} self-attention calls went through scaled_dot_product_attention, "
                               f"expected {layers}: the SDPA backend context would not govern them all")
        groups = Counter(c.key for c in self_calls)
        example = {c.key: c for c in self_calls}
        attention_s = len(calls) * sum(n * op_seconds(example[k].run(), device) for k, n in groups.items())
        backends = sorted({first_backend(example[k]) for k in groups})
        share = attention_s / dense_s
        seq_len = self_calls[0].q[0][-2]
        progress(f"self-attention alone {attention_s:.3f} s a step = {share:.1%} (S = {seq_len}, SDPA backend {backends})")
        if args.full_loop and spec.full_loop:
            loops["dense"] = timed(loop, device)
            progress(f"full loop dense: {loops['dense']:.1f} s")

        configs = sparse_configs(spec, layers, args.tiny)
        handle = dit_sparse.apply(model, measurement_config(configs["svg"]))
        measured, loop_profiles = {}, {}
        for name, cfg in configs.items():
            key = dataclasses.astuple(measurement_config(cfg))
            if key not in measured:
                handle.set_config(measurement_config(cfg))
                expected = (layers - cfg.dense_layers) * len(calls)
                measured[key] = measure_sparse(handle, step, first_call, t0, t1, repeats, device, expected)
                m = measured[key]
                progress(f"{name}: profile step {m['profile_s']:.3f} s, cached step {m['cached_s']:.3f} s, "
                         f"density {m['mean_density']:.3f}")
            if args.full_loop and spec.full_loop and name in FULL_LOOP_CONFIGS:
                handle.set_config(cfg)
                loops[name] = timed(loop, device)
                loop_profiles[name] = handle.stats().num_profiles
                progress(f"full loop {name}: {loops[name]:.1f} s")
        warmup_s = measure_warmup(handle, step, t0, configs["svg"], layers, repeats, device)
        progress(f"dense step through dit_sparse {warmup_s:.3f} s")
        trace = None
        if args.trace and device.type == "cuda":
            handle.set_config(measurement_config(configs["svg"]))
            step(t0)  # profiles; the traced step re-uses the plans
            trace = trace_step(lambda: step(t1), device)
            progress(f"traced cached svg step: {trace['gpu_busy_s']:.3f} s of kernels in {trace['wall_s']:.3f} s")
        grid_seen = handle.runtimes["transformer"].grid
        dit_sparse.remove(model)
    if grid_seen is None or grid_seen.num_video_tokens != num_tokens:
        raise RuntimeError(f"the runtime saw the grid {grid_seen}, expected {num_tokens} latent tokens")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    base = dict(
        key=spec.key, model=spec.model, height=height, width=width, num_frames=num_frames, tokens=num_tokens,
        sequence_length=seq_len, steps=STEPS, calls_per_step=len(calls), num_layers=layers, attention_share=share,
        dense_sdpa_backend="/".join(backends), distinct_timesteps=len(set(values)), finite_output=finite,
        dense_s_per_step=dense_s, total_dense_s=STEPS * dense_s, repeats=repeats, device=device_name,
        dtype=str(dtype).removeprefix("torch."), tiny=args.tiny, command=args.command,
    )
    records = [dict(base, config="dense", sparse_s_per_step=dense_s, profile_s_per_step=dense_s, mean_density=1.0,
                    speedup=1.0, total_sparse_s=STEPS * dense_s, dense_steps=STEPS, dense_layers=layers,
                    refresh_every=None, density=1.0)]
    for name, cfg in configs.items():
        m = measured[dataclasses.astuple(measurement_config(cfg))]
        total = compose(cfg, warmup_s, m["profile_s"], m["cached_s"])
        records.append(dict(
            base, config=name, sparse_s_per_step=m["cached_s"], profile_s_per_step=m["profile_s"],
            warmup_s_per_step=warmup_s,
            mean_density=m["mean_density"], speedup=base["total_dense_s"] / total["total_sparse_s"],
            speedup_vs_warmup=STEPS * warmup_s / total["total_sparse_s"], **total,
            dense_steps=cfg.dense_steps, dense_layers=cfg.dense_layers, refresh_every=cfg.refresh_every,
            density=cfg.density, recall=cfg.recall,
        ))
    for r in records:
        if r["config"] in loops:
            composed = r["total_sparse_s"]
            r["measured_total_s"] = loops[r["config"]]
            r["measured_vs_composed"] = loops[r["config"]] / composed - 1.0
            r["loop_agrees"] = abs(r["measured_vs_composed"]) <= LOOP_TOLERANCE
            if r["config"] != "dense":
                r["loop_num_profiles"] = loop_profiles[r["config"]]
                r["loop_expected_profiles"] = r["n_profile_steps"] * (layers - r["dense_layers"]) * len(calls)
            progress(f"{r['config']}: 50 steps measured {r['measured_total_s']:.1f} s, composed {composed:.1f} s "
                     f"({r['measured_vs_composed']:+.1%}, {'agree' if r['loop_agrees'] else 'DISAGREE'})")
    for r in records[1:]:
        progress(f"{r['config']}: 50 steps {r['total_sparse_s']:.1f} s vs dense {r['total_dense_s']:.1f} s "
                 f"= {r['speedup']:.2f}x")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        progress(f"peak GPU memory after building: {peak:.1f} GiB")
        for r in records:
            r["peak_gpu_gib"] = peak
    if trace is not None:
        next(r for r in records if r["config"] == "svg")["trace"] = trace
    return records


TRACE_CATEGORIES = (  # (category, substrings of kernel names), first match wins
    ("sparse attention (ours)", ("_bsa_fwd",)),
    ("reorder (ours)", ("_reorder_kernel",)),
    ("profiling (ours)", ("_block_lse",)),
    ("dense attention (SDPA)", ("cudnn", "fmha", "flash", "attention")),
    ("GEMM", ("gemm", "xmma", "cutlass", "cublas", "sm90_", "nvjet")),
)


def kernel_category(name: str) -> str:
    """The TRACE_CATEGORIES entry a CUDA kernel's name falls in, else "other"."""
    name = name.lower()
    return next((c for c, keys in TRACE_CATEGORIES if any(k.lower() in name for k in keys)), "other")


def trace_step(fn, device) -> dict:
    """One step under torch.profiler: kernel time per category, the busiest kernels, and the
    GPU's busy time against the wall time (the gap is launch latency and host work)."""
    sync(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall = timed(fn, device)
    kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    by_category = Counter()
    for e in kernels:
        by_category[kernel_category(e.key)] += e.self_device_time_total / 1e6
    busy = sum(by_category.values())
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]
    return dict(
        wall_s=wall, gpu_busy_s=busy, categories_s=dict(by_category.most_common()),
        top_kernels=[dict(name=e.key[:90], calls=e.count, s=e.self_device_time_total / 1e6) for e in top],
    )


# ---- output ----------------------------------------------------------------------------------

def record_id(r: dict) -> tuple:
    return r["model"], r["height"], r["width"], r["num_frames"], r["config"]


def merge(path: Path, records: list[dict], errors: list[dict], command: str) -> dict:
    """Add this run's records to the file's: records of the same model, resolution and config
    are replaced; errors of the models run now are dropped."""
    data = json.loads(path.read_text()) if path.exists() else {}
    new_ids = {record_id(r) for r in records}
    run_keys = {r["key"] for r in records} | {e["key"] for e in errors}
    data["records"] = [r for r in data.get("records", []) if record_id(r) not in new_ids] + records
    data["errors"] = [e for e in data.get("errors", []) if e["key"] not in run_keys] + errors
    data["commands"] = [c for c in data.get("commands", []) if c != command] + [command]
    order = {k: i for i, k in enumerate(SPECS)}
    configs = ("dense", *SPARSE_CONFIGS)
    data["records"].sort(key=lambda r: (order.get(r["key"], len(order)), configs.index(r["config"])))
    path.write_text(json.dumps(data, indent=1))
    return data


def markdown(data: dict) -> str:
    records = data["records"]
    devices = sorted({r["device"] for r in records})
    tiny = any(r["tiny"] for r in records)
    lines = [
        f"# End-to-end speed per denoising step ({', '.join(devices) or 'no records'})", "",
        *(["`--tiny`: scaled-down models, resolutions and blocks on the CPU in float32, a check of the code "
           "path; its times mean nothing.", ""] if tiny else []),
        "Full-size transformers from the checkpoints' configs (scripts/configs/e2e), random weights in bf16, "
        "called as their pipelines do (Wan: cond + uncond calls; CogVideoX: batch 2; HunyuanVideo, Flux: one call). "
        "Dense = stock processors under `sdpa_kernel([cuDNN, ...], set_priority=True)` (backend column: what it picks "
        "for the self-attention). profile = first sparse step (every sparse layer profiles), cached = a step under "
        "cached plans, warm-up = a dense step through our processors (the stock call, except HunyuanVideo: "
        "unmasked over the valid tokens, see text_mask_h100.md); 50-step totals composed as "
        "n_dense x warm-up + n_profile x profile + n_cached x cached. "
        "Fixed-density mode; svg = Sparse VideoGen's dense fractions and density, profiling every sparse step "
        "(Flux: Wan's settings); balanced / fast = our presets at svg's density. attn = self-attention share of a "
        "dense step. Measured = a real 50-step loop (must agree with the composition within 3%). "
        "vs our dense = the speed-up over 50 warm-up steps, which leaves out what our processors gain on dense "
        "steps (HunyuanVideo's unmasked valid tokens, Wan's one-pass RoPE).", "",
        "| model | H x W x F | tokens | config | dense steps / layers / refresh | dense s/step | warm-up s/step | "
        "profile s/step | cached s/step | attn | density | 50 steps dense s | 50 steps sparse s | speed-up | "
        "vs our dense | measured 50 steps s | SDPA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        refresh = "-" if r["refresh_every"] is None else r["refresh_every"]
        measured = f"{r['measured_total_s']:.1f} ({r['measured_vs_composed']:+.1%})" if "measured_total_s" in r else ""
        vs_ours = f"{r['speedup_vs_warmup']:.2f}x" if "speedup_vs_warmup" in r else "-"
        lines.append(
            f"| {r['model']} | {r['height']}x{r['width']}x{r['num_frames']} | {r['tokens']} | {r['config']} | "
            f"{r['dense_steps']} / {r['dense_layers']} / {refresh} | {r['dense_s_per_step']:.3f} | "
            f"{r.get('warmup_s_per_step', r['dense_s_per_step']):.3f} | {r['profile_s_per_step']:.3f} | {r['sparse_s_per_step']:.3f} | {r['attention_share']:.0%} | "
            f"{r['mean_density']:.3f} | {r['total_dense_s']:.1f} | {r['total_sparse_s']:.1f} | {r['speedup']:.2f}x | "
            f"{vs_ours} | {measured} | {r['dense_sdpa_backend']} |"
        )
    lines += ["", "## Targets (50 steps with SVG's dense fractions, density <= 0.3, over cuDNN dense: the svg column)", "",
              "| entry | target | svg | balanced | fast | Sparse VideoGen reported (their H100 run) |",
              "|---|---|---|---|---|---|"]
    by_key = {}
    for r in records:
        by_key.setdefault(r["key"], {})[r["config"]] = r
    for key in [k for k in SPECS if k in by_key]:
        got = by_key[key]
        target = TARGETS.get(key)
        cells = []
        for name in SPARSE_CONFIGS:
            r = got.get(name)
            if r is None:
                cells.append("")
                continue
            mark = "" if target is None or name != "svg" else (" (met)" if r["speedup"] >= target else " (missed)")
            cells.append(f"{r['speedup']:.2f}x{mark}")
        goal = "" if target is None else f">= {target}x"
        lines.append(f"| {key} | {goal} | {' | '.join(cells)} | {SVG_REPORTED.get(key, '')} |")
    merged = sorted({(r["key"], r["distinct_timesteps"]) for r in records if r["distinct_timesteps"] < r["steps"]})
    if merged:
        lines += ["", "Timesteps that coincide once the pipeline casts them (the runtime then sees fewer steps on a "
                      "bare transformer): " + ", ".join(f"{k}: {n} distinct of {STEPS}" for k, n in merged) + "."]
    traced = [r for r in records if r.get("trace")]
    if traced:
        lines += ["", "## Where a cached svg step's time goes (torch.profiler, kernel time per category)", "",
                  "| model | wall s | GPU busy s | " + " | ".join(c for c, _ in TRACE_CATEGORIES) + " | other |",
                  "|---|---|---|" + "---|" * (len(TRACE_CATEGORIES) + 1)]
        for r in traced:
            t = r["trace"]
            cells = [f"{t['categories_s'].get(c, 0.0):.3f}" for c, _ in TRACE_CATEGORIES] + [f"{t['categories_s'].get('other', 0.0):.3f}"]
            lines.append(f"| {r['model']} {r['height']}x{r['width']} | {t['wall_s']:.3f} | {t['gpu_busy_s']:.3f} | {' | '.join(cells)} |")
    if data.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e['key']}: {e['error']}" for e in data["errors"]]
    lines += ["", "## Commands", ""] + [f"- `{c}`" for c in data["commands"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of {list(SPECS)}")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (fewer for the huge shapes)")
    ap.add_argument("--full-loop", action="store_true", help="also run the 50 steps of Wan2.1-1.3B 480p")
    ap.add_argument("--tiny", action="store_true", help="scaled-down models on the CPU: a test of the code path")
    ap.add_argument("--trace", action="store_true", help="torch.profiler trace of one cached svg step (GPU)")
    args = ap.parse_args(argv)
    args.command = "python scripts/bench_e2e.py " + " ".join(sys.argv[1:] if argv is None else argv)
    names = args.models.split(",")
    if unknown := [n for n in names if n not in SPECS]:
        sys.exit(f"unknown model {unknown}; choose from {list(SPECS)}")
    if args.tiny:  # one thread: tiny ops gain nothing from more, and a busy core stalls them
        device, dtype = torch.device("cpu"), torch.float32
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        sys.exit("bench_e2e needs a CUDA GPU (or --tiny for the CPU check)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "e2e_tiny" if args.tiny else f"e2e_{gpu_tag(torch.cuda.get_device_name(device))}"
    for name in names:
        records, errors = [], []
        try:
            records = run_model(SPECS[name], args, device, dtype)
        except Exception as e:  # one model failing (e.g. out of memory) must not lose the others
            traceback.print_exc()
            errors.append(dict(key=name, error=f"{type(e).__name__}: {e}"))
            log(f"{name}: {type(e).__name__}: {e}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        data = merge(out / f"{stem}.json", records, errors, args.command)
        (out / f"{stem}.md").write_text(markdown(data))
    if args.tiny:
        torch.set_num_threads(threads)
    print(markdown(data), flush=True)


if __name__ == "__main__":
    main()
