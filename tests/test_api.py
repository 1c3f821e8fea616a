"""apply/remove, the handle, and the drop-in pipelines, on a tiny Wan pipeline."""

import pytest
import torch
from diffusers import UNet2DModel, WanPipeline

import dit_sparse
from dit_sparse import SparseAttentionConfig, UnsupportedModelError
from dit_sparse.pipelines import SparseWanPipeline

import family_checks as checks
from test_family_wan import build, call_kwargs

SPARSE = SparseAttentionConfig(dense_steps=0, dense_layers=0, **checks.TINY)


def latents(pipe, **overrides):
    return pipe(**{**call_kwargs(), **overrides}).frames


def test_enabled_switches_sparsity_off_and_on():
    pipe = build()
    stock = latents(pipe)
    handle = dit_sparse.apply(pipe, SPARSE)
    handle.enabled = False
    assert torch.equal(latents(pipe), stock) and handle.stats().sparse_calls == 0
    handle.enabled = True
    latents(pipe)
    assert handle.stats().sparse_calls > 0


def test_two_pipelines_do_not_share_state():
    dense_pipe, sparse_pipe = build(), build()
    stock = latents(dense_pipe)
    dense_handle = dit_sparse.apply(dense_pipe, SparseAttentionConfig(dense_steps=1.0, **checks.TINY))
    sparse_handle = dit_sparse.apply(sparse_pipe, SPARSE)
    latents(sparse_pipe)
    assert torch.equal(latents(dense_pipe), stock)
    latents(sparse_pipe)
    assert dense_handle.stats().sparse_calls == 0 and dense_handle.stats().num_profiles == 0
    assert sparse_handle.stats().sparse_calls > 0
    assert dense_handle.runtimes["transformer"].cache is not sparse_handle.runtimes["transformer"].cache


def test_new_resolution_reprofiles():
    pipe = build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, refresh_every=0, **checks.TINY))
    latents(pipe)
    runtime = handle.runtimes["transformer"]
    first = {key: plan.grid for key, plan in runtime.cache.plans.items()}
    latents(pipe, height=96, width=64)
    second = {key: plan.grid for key, plan in runtime.cache.plans.items()}
    assert first.keys() == second.keys()
    assert all(first[k].height == 4 and second[k].height == 6 for k in first)
    assert handle.stats().num_profiles == len(second)  # one profile per key in the new generation


def test_unsupported_models_get_a_clear_error():
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with pytest.raises(UnsupportedModelError, match="UNet2DModel.*supported families: wan") as err:
        dit_sparse.apply(unet)
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedModelError, match="got str"):
        dit_sparse.apply("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")


def test_dropin_pipeline_round_trips_through_save_pretrained(tmp_path):
    stock = build()
    pipe = SparseWanPipeline(**stock.components, sparse_config=SPARSE)
    assert isinstance(pipe, WanPipeline) and pipe.sparse_attention.config == SPARSE
    out = latents(pipe)
    assert pipe.sparse_attention.stats().sparse_calls > 0
    pipe.save_pretrained(tmp_path)
    loaded = SparseWanPipeline.from_pretrained(tmp_path, tokenizer=None, text_encoder=None, sparse_config=SPARSE)
    assert loaded.sparse_attention.config == SPARSE and loaded.sparse_attention is not pipe.sparse_attention
    torch.testing.assert_close(latents(loaded), out)
    default = SparseWanPipeline.from_pretrained(tmp_path, tokenizer=None, text_encoder=None)
    assert default.sparse_attention.config == SparseAttentionConfig()


def test_dropin_pipeline_with_sparsity_off_is_stock():
    stock = build()
    expected = latents(stock)
    pipe = SparseWanPipeline(**stock.components, sparse_config=SparseAttentionConfig(dense_steps=1.0))
    assert torch.equal(latents(pipe), expected)


def test_works_alongside_first_block_cache():
    from diffusers import FirstBlockCacheConfig

    pipe = build()
    handle = dit_sparse.apply(pipe, SPARSE)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    out = latents(pipe, num_inference_steps=4)
    assert torch.isfinite(out).all() and handle.stats().sparse_calls > 0
    assert set(handle.stats().steps["transformer"]) == {"cond", "uncond"}


def test_applying_again_with_a_config_switches_it():
    pipe = build()
    handle = dit_sparse.apply(pipe, SPARSE)
    latents(pipe)
    fixed = SparseAttentionConfig(density=0.5, dense_steps=0, dense_layers=0, **checks.TINY)
    assert dit_sparse.apply(pipe, fixed) is handle
    runtime = handle.runtimes["transformer"]
    assert handle.config == runtime.config == runtime.cache.config == fixed and not runtime.cache.plans
    latents(pipe)
    assert all(len(plan.bank.candidates) == 2 for plan in runtime.cache.plans.values())  # fixed-density bank


def test_named_branch_repeating_starts_a_new_step_even_with_equal_timesteps():
    """Flux in bf16: adjacent timesteps can round to one value; the branch repeating still marks a step."""
    from types import SimpleNamespace

    from dit_sparse.runtime import SparseRuntime

    runtime = SparseRuntime(SparseAttentionConfig(dense_steps=0))
    cond, uncond = SimpleNamespace(name="cond"), SimpleNamespace(name="uncond")
    seen = []
    for t, context in [(0.5, cond), (0.5, uncond), (0.5, cond), (0.5, uncond), (0.25, cond)]:
        runtime.begin_call(None, t, context)
        seen.append((runtime.step, runtime.branch))
    assert seen == [(0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond"), (2, "cond")]


def test_default_config_is_the_balanced_preset_everywhere():
    from dit_sparse.cli import build_parser
    from dit_sparse.compare import preset_config

    balanced = SparseAttentionConfig.preset("balanced")
    assert SparseAttentionConfig() == balanced
    pipe = build()
    assert dit_sparse.apply(pipe).config == balanced
    assert SparseWanPipeline(**build().components).sparse_attention.config == balanced
    preset = build_parser().parse_args(["generate", "--prompt", "a circle"]).preset
    assert preset_config(preset, {}) == balanced


def test_config_is_held_once_and_statistics_are_typed():
    import json

    pipe = build(transformer_2=True)
    handle = dit_sparse.apply(pipe, SPARSE)
    runtimes = list(handle.runtimes.values())
    assert all(r.config is r.cache.config is handle.config for r in runtimes)
    latents(pipe)
    stats = handle.stats()
    assert isinstance(stats, dit_sparse.SparseStats) and stats.config is handle.config
    plan = next(iter(next(iter(stats.layers.values())).values()))
    assert isinstance(plan, dit_sparse.PlanStats) and plan.heads == (0, 2)
    as_dict = json.loads(json.dumps(stats.as_dict()))
    assert as_dict["sparse_calls"] == stats.sparse_calls > 0 and as_dict["config"]["block_size"] == 16
    assert next(iter(next(iter(as_dict["layers"].values())).values()))["heads"] == [0, 2]
    assert stats.sparse_calls == sum(r.stats().sparse_calls for r in runtimes)


def test_logs_say_which_layers_are_sparse_and_why_calls_ran_dense(caplog):
    import logging

    pipe = build()
    with caplog.at_level(logging.DEBUG, logger="dit_sparse"):
        dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=1, dense_layers=1, **checks.TINY))
        latents(pipe, num_inference_steps=2)
    messages = [r.getMessage() for r in caplog.records]
    assert any("2 of 3 self-attention layers can run sparse (1-2)" in m for m in messages)
    assert any("layer 0 branch cond step 1: dense (dense_layers=1)" in m for m in messages)
    assert any("layer 2 branch uncond step 0: dense (warm-up step, dense_steps=1)" in m for m in messages)
    assert not any("layer 2 branch cond step 1: dense" in m for m in messages)


def test_the_family_registry_is_the_one_list_of_families(tmp_path):
    """Drop-in pipelines, the CLI's pipeline specs and the saved-folder lookup all come from
    the families' own entries (a Sparse* folder maps back to its stock class, SD3's included)."""
    import json

    import diffusers

    import dit_sparse.pipelines as dropins
    from dit_sparse import generation
    from dit_sparse.families import FAMILIES

    for family in FAMILIES:
        for name, stock in family.pipelines.items():
            cls = getattr(dropins, name)
            assert issubclass(cls, getattr(diffusers, stock)) and getattr(dropins, name) is cls
            assert name in dropins.__all__
            (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": name}))
            assert generation.pipeline_class_name(tmp_path) == stock
        spec = generation.PIPELINES[family.pipeline]
        assert (spec.family, spec.video, spec.patch_multiple) == (family.title, family.video, family.patch_multiple)
    assert len(generation.PIPELINES) == len(FAMILIES)
