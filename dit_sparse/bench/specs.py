"""What the end-to-end benchmark measures: each entry's checkpoint config and resolution, the
scaled-down --tiny variant, the scheduler's timesteps and the sparse settings compared."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dit_sparse import SparseAttentionConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "assets" / "transformer_configs"  # published transformer/config.json
STEPS = 50
SPARSE_CONFIGS = ("svg", "balanced", "fast")

WAN_SVG = (0.2, 0.03, 0.3)  # SVG's dense step fraction, dense layer fraction, density


@dataclass(frozen=True)
class Spec:
    """One benchmark entry: a checkpoint's architecture at one resolution."""

    key: str  # name on the command line
    model: str  # name in the records
    family: str  # the ModelFamily name: "wan", "hunyuan_video", "cogvideox", "flux"
    config: str  # file in CONFIG_DIR
    height: int
    width: int
    num_frames: int  # 1 for images
    text_len: int
    svg: tuple[float, float, float]
    max_repeats: int | None = None  # fewer timed steps for the huge shapes
    flow_shift: float | None = None  # Wan's scheduler shift at this resolution
    full_loop: bool = False  # `--full-loop` runs the 50 steps of this entry
    known_tokens: int | None = None  # latent tokens of the real latents: a check of the grid
    target: float | None = None  # the 50-step speed-up over dense aimed at with svg's settings
    compiled_target: float | None = None  # the same, compiled against compiled dense
    svg_reported: str = ""  # Sparse VideoGen's reported speed-up (their H100 run)

    def repeats(self, requested: int) -> int:
        """Timed steps per measurement: `requested`, at most `max_repeats`."""
        return min(requested, self.max_repeats or requested)


SPECS = {s.key: s for s in (
    Spec("wan1.3b-480", "Wan2.1-T2V-1.3B", "wan", "wan2.1-t2v-1.3b.json", 480, 832, 81, 512, WAN_SVG,
         flow_shift=3.0, full_loop=True, known_tokens=32760, target=1.6, compiled_target=1.5, svg_reported="1.32x"),
    Spec("wan1.3b-720", "Wan2.1-T2V-1.3B", "wan", "wan2.1-t2v-1.3b.json", 720, 1280, 81, 512, WAN_SVG, flow_shift=5.0,
         known_tokens=75600, target=2.2, svg_reported="1.51x"),
    Spec("wan14b-720", "Wan2.1-T2V-14B", "wan", "wan2.1-t2v-14b.json", 720, 1280, 81, 512, WAN_SVG,
         max_repeats=1, flow_shift=5.0, known_tokens=75600, target=2.2, compiled_target=1.6, svg_reported="1.51x"),
    Spec("hunyuan-720", "HunyuanVideo", "hunyuan_video", "hunyuanvideo.json", 720, 1280, 129, 256, (0.1, 0.03, 0.25),
         max_repeats=1, known_tokens=118800, target=2.6, compiled_target=2.9,
         svg_reported="1.91x (repo), 2.33x (paper)"),
    Spec("cogvideox-768", "CogVideoX1.5-5B", "cogvideox", "cogvideox1.5-5b.json", 768, 1360, 81, 226, (0.2, 0.025, 0.25),
         max_repeats=2, svg_reported="2.28x"),
    Spec("flux-1024", "FLUX.1-dev", "flux", "flux.1-dev.json", 1024, 1024, 1, 512, WAN_SVG),
    Spec("flux-2048", "FLUX.1-dev", "flux", "flux.1-dev.json", 2048, 2048, 1, 512, WAN_SVG),
)}
DEFAULT_MODELS = "wan1.3b-480,wan14b-720,hunyuan-720,cogvideox-768,flux-1024,flux-2048"

TINY_CONFIG = {  # config overrides of --tiny: a few layers, 2 heads x 16, small embeddings
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


def load_config(spec: Spec, tiny: bool = False) -> dict:
    """The checkpoint's transformer config, with --tiny's overrides."""
    config = json.loads((CONFIG_DIR / spec.config).read_text())
    if tiny:
        config.update(TINY_CONFIG[spec.family])
    return config


def run_size(spec: Spec, tiny: bool = False) -> tuple[int, int, int, int]:
    """(height, width, num_frames, text tokens) a run uses: the entry's, or for --tiny an eighth of
    its height and width (multiples of 16), 9 frames of video and 8 text tokens."""
    if not tiny:
        return spec.height, spec.width, spec.num_frames, spec.text_len
    height, width = (max(16, round(n / 128) * 16) for n in (spec.height, spec.width))
    return height, width, min(spec.num_frames, 9), TINY_TEXT_LEN


def schedule(spec: Spec, num_tokens: int, steps: int = STEPS) -> torch.Tensor:
    """The timesteps of the family's scheduler as its pipeline sets them (Flux shifts them by
    its image's `num_tokens`)."""
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


def sparse_configs(spec: Spec, num_layers: int, tiny: bool = False, steps: int = STEPS) -> dict[str, SparseAttentionConfig]:
    """svg and the presets, dense warm-up as a step count (the bare transformer's step count is unknown)."""
    step_fraction, layer_fraction, density = spec.svg
    extra = TINY_ENGINE if tiny else {}
    svg = SparseAttentionConfig(
        dense_steps=round(step_fraction * steps), dense_layers=max(1, round(layer_fraction * num_layers)),
        refresh_every=1, density=density, **extra,
    )
    return {"svg": svg, **preset_configs(spec, tiny, steps)}


def preset_configs(spec: Spec, tiny: bool = False, steps: int = STEPS) -> dict[str, SparseAttentionConfig]:
    """balanced and fast for `spec`, dense warm-up as a step count."""
    extra = TINY_ENGINE if tiny else {}
    configs = {}
    for name in ("balanced", "fast"):
        preset = SparseAttentionConfig.preset(name, density=spec.svg[2], **extra)
        configs[name] = dataclasses.replace(preset, dense_steps=preset.num_dense_steps(steps))
    return configs
