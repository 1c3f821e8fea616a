"""What the step-cache tests share: each diffusers cache with settings that make it skip on the
tiny Wan and Flux pipelines, and a record of which self-attention calls really ran."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

from dit_sparse.bench.tiny_pipelines import flux, wan

FAMILIES = {"wan": wan, "flux": flux}
STEPS = 8
KINDS = ("first-block", "mag", "taylorseer", "faster", "pab")
# PAB and FasterCache count their calls, not the CFG branch's (their state is not per cache
# context), so with separate cond and uncond calls the uncond branch would re-use cond's
# attention: they run without CFG (FasterCache as for a guidance-distilled model)
WITHOUT_CFG = ("faster", "pab")


def cache_config(kind: str, family: str, pipe):
    """A config of `kind` that skips some but not all steps of the tiny `family` pipeline in STEPS steps."""
    if kind == "first-block":  # the first block's residual changes little on the tiny random models
        return FirstBlockCacheConfig(threshold={"wan": 0.1, "flux": 0.3}[family])
    if kind == "mag":  # made-up ratios: the accumulated error passes the threshold every third step
        return MagCacheConfig(threshold=0.5, retention_ratio=0.2, num_inference_steps=STEPS,
                              mag_ratios=[1.0] + [0.9] * (STEPS - 1))
    if kind == "taylorseer":  # attention modules predicted every other step (Wan's named: the default misses them)
        names = [r"blocks\.\d+\.attn1"] if family == "wan" else None
        return TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2, cache_identifiers=names,
                                     taylor_factors_dtype=torch.float32)
    if kind == "faster":
        return FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 990),
                                 is_guidance_distilled=True, tensor_format="BCHW",
                                 current_timestep_callback=lambda: pipe.current_timestep,
                                 attention_weight_callback=lambda _: 0.5)
    return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                           spatial_attention_timestep_skip_range=(-1, 1001),
                                           current_timestep_callback=lambda: pipe.current_timestep)


def call_kwargs(family: str, kind: str | None = None, **overrides) -> dict:
    module = FAMILIES[family]
    kwargs = {**module.call_kwargs(), "num_inference_steps": STEPS, **overrides}
    if kind in WITHOUT_CFG:
        kwargs["guidance_scale" if family == "wan" else "true_cfg_scale"] = 1.0
    return kwargs


def generate(pipe, family: str, kind: str | None = None, **overrides) -> torch.Tensor:
    out = pipe(**call_kwargs(family, kind, **overrides))
    return out.frames if hasattr(out, "frames") else out.images


SELF_ATTENTION = {  # the self-attention modules in dit_sparse's layer order (whatever processor they have now)
    "wan": lambda t: [block.attn1 for block in t.blocks],
    "flux": lambda t: [block.attn for block in (*t.transformer_blocks, *t.single_transformer_blocks)],
}


@contextmanager
def computed_calls(pipe, family: str):
    """Inside: a list of (step, layer) for every self-attention call whose computation ran. A
    hook on the attention's query projection fires only when the attention module's own forward
    runs, whichever cache (block-level or attention-level) skipped the rest."""
    seen, handles = [], []
    for layer, module in enumerate(SELF_ATTENTION[family](pipe.transformer)):
        def record(_module, _args, layer=layer):
            index = pipe.scheduler.step_index
            seen.append((0 if index is None else index, layer))
        handles.append(module.to_q.register_forward_pre_hook(record))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()

