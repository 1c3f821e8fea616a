"""apply / remove: switch a diffusers pipeline or transformer to sparse attention and back."""

from __future__ import annotations

import torch
from diffusers.utils import logging

from . import hooks, step_cache
from .config import SparseAttentionConfig
from .families import find_family, supported
from .runtime import SparseRuntime
from .schedule import SchedulerClock
from .stats import SparseStats

TRANSFORMER_ATTRIBUTES = ("transformer", "transformer_2")  # Wan 2.2 A14B carries two
HANDLE_ATTRIBUTE = "_dit_sparse_handle"
# processor settings diffusers sets on every attention processor (set_attention_backend,
# enable_parallelism); a processor swap hands them on, in both directions
PROCESSOR_SETTINGS = ("_attention_backend", "_parallel_config")


logger = logging.get_logger(__name__)


class UnsupportedModelError(ValueError):
    """The model is not one of the families dit_sparse has processors for."""


class SparseAttention:
    """Handle of sparse attention applied to one pipeline or transformer.

    `stats()` reports per self-attention layer the head kinds and densities of its latest plan,
    and totals; `reset()` forgets plans and counts; `enabled = False` runs every call dense
    (through the model's own attention) without removing anything; `set_cache(...)` adds,
    swaps or (with "none") removes the diffusers step cache it manages.
    """

    def __init__(self, runtimes: dict[str, SparseRuntime], originals: list, transformers: dict, pipe=None):
        self.runtimes = runtimes
        self._originals = originals  # (attention module, its processor before apply)
        self._transformers = transformers  # name -> transformer
        self._pipe = pipe  # the pipeline applied to (None for a bare transformer): its timestep for PAB/FasterCache

    @property
    def config(self) -> SparseAttentionConfig:
        """The config in force (each runtime holds it; they all hold the same)."""
        return next(iter(self.runtimes.values())).config

    @property
    def enabled(self) -> bool:
        return all(r.enabled for r in self.runtimes.values())

    @enabled.setter
    def enabled(self, value: bool):
        for r in self.runtimes.values():
            r.enabled = bool(value)

    def reset(self):
        for r in self.runtimes.values():
            r.reset()

    def set_config(self, config: SparseAttentionConfig):
        """Switch to another config (plans and counts start afresh)."""
        for r in self.runtimes.values():
            r.set_config(config)

    @property
    def cache(self):
        """The diffusers cache config of the step cache this handle added (one per transformer,
        all alike), or None."""
        added = [r.step_cache.config for r in self.runtimes.values() if r.step_cache is not None]
        return added[0] if added else None

    def set_cache(self, cache):
        """Add the step cache `cache` (a name of step_cache.CACHE_NAMES or a diffusers cache
        config; see step_cache.resolve) to every transformer, in place of the one added before;
        "none" removes it. Nothing changes where the request is refused (step_cache.StepCacheError)."""
        configs = step_cache.resolve_all(cache, self._transformers, self._pipe)
        for name, runtime in self.runtimes.items():
            step_cache.check_free(self._transformers[name], name, runtime.step_cache)
        for name, runtime in self.runtimes.items():
            if runtime.step_cache is not None:
                runtime.step_cache.disable()
                runtime.step_cache = None
            if configs[name] is not None:
                added = step_cache.StepCache(self._transformers[name], configs[name])
                added.enable()
                runtime.step_cache = added

    def stats(self) -> SparseStats:
        """Per self-attention layer ("<transformer>.<index>") and CFG branch: head kinds and
        densities of the latest plan (layers that never ran sparse are absent; `layer_indices`
        lists every layer per transformer); totals over all transformers of this generation.
        `.as_dict()` gives it as plain dicts."""
        return SparseStats.merge([r.stats() for r in self.runtimes.values()])

    def remove(self):
        """Restore the processors that were there before, with the settings diffusers gave the
        sparse ones meanwhile (e.g. enable_parallelism after apply), detach the hooks, and remove
        the step cache this handle added."""
        for runtime in self.runtimes.values():
            if runtime.step_cache is not None:
                runtime.step_cache.disable()
                runtime.step_cache = None
        for module, processor in self._originals:
            _hand_on_settings(module.processor, processor)
            module.set_processor(processor)
        for transformer in self._transformers.values():
            hooks.detach(transformer)
            if getattr(transformer, HANDLE_ATTRIBUTE, None) is self:
                delattr(transformer, HANDLE_ATTRIBUTE)
        self._originals = []


def _hand_on_settings(source, target):
    """Copy diffusers' per-processor settings from one attention processor to the next."""
    for setting in PROCESSOR_SETTINGS:
        if hasattr(source, setting) and hasattr(target, setting):
            setattr(target, setting, getattr(source, setting))


def transformers_of(target) -> dict[str, torch.nn.Module]:
    """The transformers of a pipeline by attribute name ("transformer", "transformer_2"), or
    {"transformer": target} for a transformer."""
    from diffusers import DiffusionPipeline

    if isinstance(target, DiffusionPipeline):
        found = {n: getattr(target, n) for n in TRANSFORMER_ATTRIBUTES if getattr(target, n, None) is not None}
        if not found:
            raise UnsupportedModelError(
                f"{type(target).__name__} has no transformer; dit_sparse supports pipelines of these "
                f"transformer families: {supported()}"
            )
        return found
    if isinstance(target, torch.nn.Module):
        return {"transformer": target}
    raise UnsupportedModelError(
        f"dit_sparse.apply needs a DiffusionPipeline or a transformer (torch.nn.Module), got "
        f"{type(target).__name__}; supported families: {supported()}"
    )


def apply(target, config: SparseAttentionConfig | None = None, cache=None) -> SparseAttention:
    """Give the self-attention layers of a pipeline's transformer(s), or of a transformer,
    sparse processors. Applying again returns the same handle (with `config`, if given), and
    after `torch.compile` of a whole transformer moves the step hook onto the compiled wrapper,
    outside its compiled region.

    `cache`, in the style of diffusers' `enable_cache`: a step cache to run with the sparse
    attention, by name ("first-block", "mag", "taylorseer"; "none" removes the one added before)
    or as a diffusers cache config (FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig,
    FasterCacheConfig, PyramidAttentionBroadcastConfig); None keeps what is there. The cache is
    kept from skipping the dense warm-up steps (dit_sparse/step_cache.py; `config.cache_in_warmup`
    lets it), and `remove` removes it. MagCache needs magnitude ratios per model: bundled for the
    demo model, else calibrate them (`calibrate_mag_cache`, `dit-sparse calibrate`)."""
    outer = transformers_of(target)
    transformers = {name: hooks.unwrap(t) for name, t in outer.items()}
    handles = {id(h) for t in transformers.values() if (h := getattr(t, HANDLE_ATTRIBUTE, None)) is not None}
    if handles:
        handle = getattr(next(iter(transformers.values())), HANDLE_ATTRIBUTE)
        if len(handles) == 1 and all(getattr(t, HANDLE_ATTRIBUTE, None) is handle for t in transformers.values()):
            if config is not None and config != handle.config:
                handle.set_config(config)
            for transformer in outer.values():
                hooks.attached(transformer).call_site(transformer)
            if cache is not None:
                handle.set_cache(cache)
            return handle
        raise ValueError("some of these transformers already have dit_sparse applied on their own; remove it first")
    for name, transformer in transformers.items():
        if find_family(transformer) is None:
            raise UnsupportedModelError(
                f"dit_sparse has no processors for {type(transformer).__name__} ({name}); supported "
                f"families: {supported()}"
            )
    config = config or SparseAttentionConfig()
    runtimes, originals = {}, []
    scheduler = getattr(target, "scheduler", None)
    clock = SchedulerClock(scheduler) if scheduler is not None else None
    for name, transformer in transformers.items():
        family = find_family(transformer)
        runtime = SparseRuntime(config, name, clock)
        for layer, module in family.self_attention(transformer):
            processor = family.make_processor(module, runtime, layer)
            _hand_on_settings(module.processor, processor)  # the stock path keeps them
            originals.append((module, module.processor))
            module.set_processor(processor)
        hooks.attach(outer[name], hooks.StepHook(runtime, family))
        runtimes[name] = runtime
        sparse = [layer for layer in runtime.layers if layer >= config.dense_layers]
        logger.info(
            "dit_sparse: %s (%s): %d of %d self-attention layers can run sparse (%s); the first %d stay dense "
            "(dense_layers), and so do the first dense_steps=%s steps", name, type(transformer).__name__,
            len(sparse), len(runtime.layers), _ranges(sparse), config.dense_layers, config.dense_steps,
        )
    handle = SparseAttention(runtimes, originals, transformers, pipe=None if isinstance(target, torch.nn.Module) else target)
    for transformer in transformers.values():
        setattr(transformer, HANDLE_ATTRIBUTE, handle)
    if cache is not None:
        try:
            handle.set_cache(cache)
        except step_cache.StepCacheError:
            handle.remove()  # a refused cache leaves the model as it was
            raise
    return handle


def _ranges(indices: list[int]) -> str:
    """"1-5, 8" for [1, 2, 3, 4, 5, 8]."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


def remove(target) -> None:
    """Undo `apply`: the original processors come back, the hooks go. No-op if not applied."""
    for transformer in transformers_of(target).values():
        handle = getattr(transformer, HANDLE_ATTRIBUTE, None)
        if handle is not None:
            handle.remove()
