"""The diffusers step cache that `dit_sparse.apply(..., cache=...)` adds, aligned with our warm-up.

diffusers ships step caches as hooks (FirstBlockCache, MagCache, TaylorSeer, FasterCache,
Pyramid Attention Broadcast), enabled per transformer with `enable_cache(config)`. `resolve`
turns `cache=` (a name from CACHE_NAMES or a diffusers config object) into the config to
enable, with clear errors for what cannot work; `StepCache` enables it, removes it again, and
before every transformer call keeps the cache from skipping our dense warm-up steps: those steps
are meant to run exact attention, so a cache that skipped them would silently shorten the
warm-up (unless `SparseAttentionConfig.cache_in_warmup`). Where the cache has a warm-up of its
own that is longer, the steps after ours run sparse and computed, so neither side's full-compute
steps are wasted:

- MagCache: it never skips its first `retention_ratio` of the steps; raised to cover ours. Its
  ratios and step count follow each generation's step count (diffusers fixes both at config time).
- TaylorSeer: `disable_cache_before_step` raised to our warm-up's length.
- FirstBlockCache has no warm-up: it is held from skipping during ours.
- FasterCache and PAB skip by timestep range: held from skipping during ours.
"""

from __future__ import annotations

import dataclasses
import math

import diffusers
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.mag_cache import nearest_interp
from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK
from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

from . import hooks, mag_ratios

CACHE_NAMES = ("none", "first-block", "mag", "taylorseer")
CACHE_CONFIGS = (FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig, FasterCacheConfig,
                 PyramidAttentionBroadcastConfig)
NEVER = (0.0, 0.0)  # an empty timestep range: FasterCache and PAB skip only strictly inside theirs


class StepCacheError(ValueError):
    """`cache=` asks for something that cannot work on this model; the message says what to do."""


def resolve(cache, transformer: torch.nn.Module, pipe=None, name: str = "transformer"):
    """The diffusers cache config to enable on `transformer` for `cache` (None for "none").

    Names: "first-block" (FirstBlockCacheConfig, diffusers' defaults), "mag" (MagCacheConfig,
    diffusers' defaults, with the magnitude ratios bundled for the demo model; other models need
    their own: see `mag_ratios.calibrate_mag_cache`), "taylorseer" (TaylorSeerCacheConfig,
    diffusers' defaults in its lite mode, which caches the transformer's output and skips whole
    blocks, so it fits every family, with Taylor factors in the model's dtype). A config object
    is copied (the caller's stays as given); PAB and FasterCache get `pipe.current_timestep` as
    their timestep callback where they have none.
    """
    if cache == "none":
        return None
    if not hasattr(transformer, "enable_cache"):
        raise StepCacheError(
            f"{type(transformer).__name__} ({name}) does not support diffusers' step caches (it has no enable_cache in "
            f"diffusers {diffusers.__version__}); run it without cache=, or with dit_sparse alone."
        )
    if isinstance(cache, str):
        return _named(cache, transformer, name)
    if not isinstance(cache, CACHE_CONFIGS):
        raise StepCacheError(
            f"cache={cache!r} is neither a cache name ({', '.join(CACHE_NAMES)}) nor a diffusers cache config "
            f"({', '.join(c.__name__ for c in CACHE_CONFIGS)})."
        )
    config = dataclasses.replace(cache)
    if isinstance(config, (FasterCacheConfig, PyramidAttentionBroadcastConfig)) and config.current_timestep_callback is None:
        if pipe is None or not hasattr(type(pipe), "current_timestep"):
            raise StepCacheError(
                f"{type(config).__name__} needs current_timestep_callback, and dit_sparse was given no pipeline to read "
                "the timestep from: apply to the pipeline, or set current_timestep_callback=lambda: pipe.current_timestep."
            )
        config.current_timestep_callback = lambda: pipe.current_timestep
    return config


def resolve_all(cache, transformers: dict, pipe=None) -> dict:
    """`resolve` for each transformer (name -> module) of one pipeline: name -> config or None."""
    configs = {name: resolve(cache, t, pipe, name) for name, t in transformers.items()}
    if len(configs) > 1 and any(isinstance(c, MagCacheConfig) for c in configs.values()):
        raise StepCacheError(
            "MagCache counts the steps of one transformer, but this pipeline splits its steps between "
            f"{' and '.join(configs)} (Wan 2.2's two experts): use cache='first-block' or 'taylorseer'."
        )
    return configs


def _named(cache: str, transformer, name: str):
    if cache == "first-block":
        return FirstBlockCacheConfig()
    if cache == "taylorseer":
        return TaylorSeerCacheConfig(use_lite_mode=True, taylor_factors_dtype=transformer.dtype)
    if cache == "mag":
        ratios = mag_ratios.bundled(transformer)
        if ratios is None:
            raise StepCacheError(
                f"MagCache needs magnitude ratios calibrated for this model, and dit_sparse ships them only for the "
                f"bundled demo model, not for this {type(transformer).__name__} ({name}). Calibrate them once "
                "(`dit-sparse calibrate --model ... --output ratios.json`, or dit_sparse.calibrate_mag_cache(pipe, ...)) "
                "and pass them: --mag-ratios ratios.json on the command line, or in Python "
                "cache=MagCacheConfig(mag_ratios=ratios, num_inference_steps=len(ratios))."
            )
        return MagCacheConfig(mag_ratios=ratios, num_inference_steps=len(ratios))
    raise StepCacheError(
        f"cache={cache!r} is not a cache dit_sparse names: choose one of {', '.join(CACHE_NAMES)}, or pass a diffusers "
        f"cache config ({', '.join(c.__name__ for c in CACHE_CONFIGS)})."
    )


def add(pipe, cache, transformers: dict) -> list[StepCache]:
    """`cache` alone on the `transformers` (name -> module) of `pipe`, with no sparse attention
    to align with: what `dit-sparse generate --preset dense --cache ...` runs."""
    configs = resolve_all(cache, transformers, pipe)
    added = [StepCache(transformers[name], config) for name, config in configs.items() if config is not None]
    for one in added:
        one.enable()
    return added


def check_free(transformer, name: str = "transformer", ours=None):
    """Refuse where `transformer` has a step cache other than `ours` (a StepCache): one that
    dit_sparse did not add, which `cache=` would have to replace."""
    current = getattr(transformer, "_cache_config", None)
    if current is not None and (ours is None or current is not ours.config):
        raise StepCacheError(
            f"{type(transformer).__name__} ({name}) already has a step cache ({type(current).__name__}) that dit_sparse "
            "did not add: call transformer.disable_cache() first, or leave cache= out to keep it."
        )


class StepCache:
    """A diffusers step cache on one transformer, added by `apply` and removed by `remove`."""

    def __init__(self, transformer: torch.nn.Module, config):
        self.transformer = transformer
        self.config = config
        self._hooks: list = []  # (hook, attribute, its configured value) that `align` adjusts
        self._mag_source = None  # MagCache: the ratios as given, re-interpolated per step count

    def enable(self):
        """`enable_cache(config)`, refused where the transformer already has a cache of its own."""
        check_free(self.transformer)
        try:
            self.transformer.enable_cache(self.config)
        except ValueError as e:
            raise StepCacheError(
                f"diffusers cannot add {type(self.config).__name__} to {type(self.transformer).__name__}: {e}"
            ) from None
        self._collect_hooks()

    def disable(self):
        if getattr(self.transformer, "_cache_config", None) is self.config:
            self.transformer.disable_cache()

    def _collect_hooks(self):
        config = self.config
        if isinstance(config, MagCacheConfig):
            self._mag_source = config.mag_ratios.clone()
            self._hooks = [(config, "retention_ratio", config.retention_ratio)]
            return
        attributes = {
            FirstBlockCacheConfig: [(_FBC_LEADER_BLOCK_HOOK, "threshold")],
            TaylorSeerCacheConfig: [(_TAYLORSEER_CACHE_HOOK, "disable_cache_before_step")],
            PyramidAttentionBroadcastConfig: [(_PYRAMID_ATTENTION_BROADCAST_HOOK, "timestep_skip_range")],
            FasterCacheConfig: [(_FASTER_CACHE_BLOCK_HOOK, "timestep_skip_range"),
                                (_FASTER_CACHE_DENOISER_HOOK, "unconditional_batch_timestep_skip_range")],
        }[type(config)]
        for hook_name, attribute in attributes:
            self._hooks += [(hook, attribute, getattr(hook, attribute)) for hook in hooks.registered(self.transformer, hook_name)]
        if not self._hooks:
            self.disable()
            raise StepCacheError(
                f"{type(config).__name__} found nothing to cache in {type(self.transformer).__name__}: its module name "
                "patterns match none of this model's modules. For TaylorSeer use use_lite_mode=True (what cache="
                "'taylorseer' does) or give cache_identifiers naming this model's attention modules."
            )

    def align(self, step: int, num_steps: int | None, warmup: int, sparse: bool = True):
        """Before a transformer call at `step` of `num_steps` whose first `warmup` steps run dense:
        keep the cache from skipping those steps (only while sparse attention is on; with it off,
        the cache runs as configured)."""
        if self._mag_source is not None and num_steps is not None and self.config.num_inference_steps != num_steps:
            self.config.num_inference_steps = num_steps
            self.config.mag_ratios = nearest_interp(self._mag_source, num_steps)
        held = sparse and step < warmup
        for hook, attribute, value in self._hooks:
            setattr(hook, attribute, _aligned(attribute, value, held, warmup, num_steps, sparse))


def _aligned(attribute: str, value, held: bool, warmup: int, num_steps: int | None, sparse: bool):
    """The value of a cache setting that keeps it from skipping the first `warmup` steps."""
    if not sparse:
        return value
    if attribute == "retention_ratio":  # MagCache keeps int(ratio * num_steps + 0.5) steps
        return value if not num_steps else max(value, warmup / num_steps)
    if attribute == "disable_cache_before_step":
        return max(value, warmup)
    if attribute == "threshold":  # FirstBlockCache computes where the change exceeds it
        return -math.inf if held else value
    return NEVER if held else value
