"""`dit_sparse.apply(pipe, config, cache=...)`: one supported "sparse + step cache" setting. The
cache is kept from skipping the dense warm-up steps, MagCache follows the generation's step
count, `remove` removes the cache, and what cannot work is refused with a message saying what
to do, leaving the model as it was."""

import dataclasses

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

import dit_sparse
from dit_sparse import SparseAttentionConfig, StepCacheError
from dit_sparse.bench.tiny_pipelines import sd3
from dit_sparse.pipelines import SparseWanPipeline

import family_checks as checks
import step_cache_checks as sc

WARMUP = 3  # dense steps of 8: longer than MagCache's (2) and TaylorSeer's (2) own here


def config(dense_steps=WARMUP):
    return SparseAttentionConfig(dense_steps=dense_steps, dense_layers=0, refresh_every=2, **checks.TINY)


def computed_steps(pipe, family, kind=None, **overrides):
    """Per step, how many self-attention calls computed."""
    with sc.computed_calls(pipe, family) as seen:
        sc.generate(pipe, family, kind, **overrides)
    counts = [0] * overrides.get("num_inference_steps", sc.STEPS)
    for step, _ in seen:
        counts[step] += 1
    return counts


@pytest.mark.parametrize("kind", sc.KINDS)
def test_the_cache_never_skips_the_dense_warmup(kind):
    """By hand each cache skips one of the first WARMUP steps (FirstBlockCache and PAB have no
    warm-up; MagCache's and TaylorSeer's here are 2 steps); through apply(cache=...) none of them
    is skipped, later steps still are, and the sparse calls are counted as they ran."""
    family = "wan"
    pipe = sc.FAMILIES[family].build()
    pipe.transformer.enable_cache(sc.cache_config(kind, family, pipe))
    by_hand = computed_steps(pipe, family, kind)
    full = max(by_hand)
    assert min(by_hand[:WARMUP]) < full
    pipe = sc.FAMILIES[family].build()
    handle = dit_sparse.apply(pipe, config(), cache=sc.cache_config(kind, family, pipe))
    aligned = computed_steps(pipe, family, kind)
    assert aligned[:WARMUP] == [full] * WARMUP and min(aligned[WARMUP:]) < full
    stats = handle.stats()
    assert stats.skipped_steps["transformer"] and min(stats.computed_steps["transformer"]) >= WARMUP
    assert stats.sparse_calls == sum(aligned[WARMUP:])


@pytest.mark.parametrize("kind", ["first-block", "mag"])
def test_cache_in_warmup_lets_the_cache_serve_there(kind):
    """With cache_in_warmup the warm-up steps are served as the cache alone serves them (the warm-up's
    attention is the model's own, so the cache sees the same outputs), not held off."""
    family = "wan"
    pipe = sc.FAMILIES[family].build()
    pipe.transformer.enable_cache(sc.cache_config(kind, family, pipe))
    by_hand = computed_steps(pipe, family, kind)
    assert min(by_hand[:WARMUP]) < max(by_hand)
    pipe = sc.FAMILIES[family].build()
    served = dataclasses.replace(config(), cache_in_warmup=True)
    dit_sparse.apply(pipe, served, cache=sc.cache_config(kind, family, pipe))
    assert computed_steps(pipe, family, kind)[:WARMUP] == by_hand[:WARMUP]  # with some served, by the line above


def test_named_caches_run_and_remove_cleanly():
    pipe = sc.FAMILIES["flux"].build()
    stock = sc.generate(pipe, "flux")
    handle = dit_sparse.apply(pipe, config(), cache="first-block")
    assert isinstance(handle.cache, FirstBlockCacheConfig) and pipe.transformer._cache_config is handle.cache
    assert torch.isfinite(sc.generate(pipe, "flux")).all()
    assert dit_sparse.apply(pipe, cache="taylorseer") is handle
    assert isinstance(pipe.transformer._cache_config, TaylorSeerCacheConfig) and handle.cache.use_lite_mode
    sc.generate(pipe, "flux")
    assert handle.stats().skipped_steps["transformer"]  # lite mode skips whole blocks
    dit_sparse.apply(pipe, cache="none")
    assert handle.cache is None and pipe.transformer._cache_config is None
    dit_sparse.apply(pipe, cache="first-block")
    dit_sparse.remove(pipe)
    assert pipe.transformer._cache_config is None
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks for m in pipe.transformer.modules())
    assert torch.equal(sc.generate(pipe, "flux"), stock)


def test_mag_cache_follows_the_step_count_and_leaves_the_callers_config_alone():
    pipe = sc.FAMILIES["wan"].build()
    given = sc.cache_config("mag", "wan", pipe)
    handle = dit_sparse.apply(pipe, config(dense_steps=0.5), cache=given)
    counts = computed_steps(pipe, "wan", num_inference_steps=12)
    assert handle.cache.num_inference_steps == 12 and len(handle.cache.mag_ratios) == 12
    assert given.num_inference_steps == sc.STEPS and given.retention_ratio == 0.2  # a copy was aligned
    assert counts[:6] == [max(counts)] * 6 and min(counts[6:]) < max(counts)  # half the steps dense, never skipped


def test_handle_off_runs_the_cache_as_configured():
    """With sparse attention switched off there is no warm-up to protect: the cache alone."""
    pipe = sc.FAMILIES["wan"].build()
    pipe.transformer.enable_cache(sc.cache_config("first-block", "wan", pipe))
    alone = sc.generate(pipe, "wan")
    pipe = sc.FAMILIES["wan"].build()
    handle = dit_sparse.apply(pipe, config(), cache=sc.cache_config("first-block", "wan", pipe))
    handle.enabled = False
    assert torch.equal(sc.generate(pipe, "wan"), alone)


def test_dropin_pipeline_takes_a_cache():
    stock = sc.FAMILIES["wan"].build()
    pipe = SparseWanPipeline(**stock.components, sparse_config=config(), cache="first-block")
    assert isinstance(pipe.sparse_attention.cache, FirstBlockCacheConfig)
    assert torch.isfinite(sc.generate(pipe, "wan")).all()


def test_mag_cache_needs_ratios_for_models_other_than_the_demo():
    pipe = sc.FAMILIES["wan"].build()
    with pytest.raises(StepCacheError, match="MagCache needs magnitude ratios.*dit-sparse calibrate.*--mag-ratios"):
        dit_sparse.apply(pipe, config(), cache="mag")
    assert not hasattr(pipe.transformer, "_dit_sparse_handle")  # refused: nothing applied
    assert pipe.transformer._cache_config is None


def test_bad_caches_are_refused_with_what_to_do():
    pipe = sc.FAMILIES["wan"].build()
    with pytest.raises(StepCacheError, match="not a cache dit_sparse names: choose one of none, first-block, mag"):
        dit_sparse.apply(pipe, config(), cache="teacache")
    with pytest.raises(StepCacheError, match="found nothing to cache.*use_lite_mode=True"):
        dit_sparse.apply(pipe, config(), cache=TaylorSeerCacheConfig())  # its default names miss Wan's attention
    assert pipe.transformer._cache_config is None and not hasattr(pipe.transformer, "_dit_sparse_handle")
    pipe.transformer.enable_cache(FirstBlockCacheConfig())
    with pytest.raises(StepCacheError, match="already has a step cache.*disable_cache"):
        dit_sparse.apply(pipe, config(), cache="first-block")
    handle = dit_sparse.apply(pipe, config())  # without cache= the user's own cache stays
    assert handle.cache is None and isinstance(pipe.transformer._cache_config, FirstBlockCacheConfig)
    with pytest.raises(StepCacheError, match="current_timestep_callback"):
        dit_sparse.apply(sc.FAMILIES["wan"].build().transformer, config(),
                         cache=PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2))


def test_transformers_without_step_caches_and_two_experts_are_refused():
    with pytest.raises(StepCacheError, match="SD3Transformer2DModel.*does not support diffusers' step caches"):
        dit_sparse.apply(sd3.build(), config(), cache="first-block")
    two = sc.FAMILIES["wan"].build(transformer_2=True)
    ratios = MagCacheConfig(mag_ratios=[1.0] * 4, num_inference_steps=4)
    with pytest.raises(StepCacheError, match="MagCache counts the steps of one transformer.*first-block"):
        dit_sparse.apply(two, config(), cache=ratios)
    handle = dit_sparse.apply(two, config(), cache="first-block")
    assert all(r.step_cache is not None for r in handle.runtimes.values())
