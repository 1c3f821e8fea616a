"""Where generations begin and end, and which step a call is: interrupted and 1-step generations,
Wan 2.2's two experts in image-to-video, and dit_sparse applied to a bare transformer."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from PIL import Image

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.schedule import SchedulerClock

import family_checks as checks
import test_family_flux as flux
import test_family_wan as wan

# every step sparse but the first; plans never refreshed, so a plan left over from an earlier
# generation would serve (and change) the next one
SPARSE = SparseAttentionConfig(dense_steps=1, dense_layers=0, refresh_every=0, **checks.TINY)
FAMILIES = {"wan": wan, "flux": flux}  # Wan passes step_index through the cache context, Flux does not


def stop_after_first_step(pipe, step, timestep, callback_kwargs):
    pipe._interrupt = True
    return callback_kwargs


def run(pipe, family, **overrides):
    return checks.generate(pipe, lambda: {**family.call_kwargs(), **overrides})


def fresh_run(family, config, **overrides):
    pipe = family.build()
    handle = dit_sparse.apply(pipe, config)
    return run(pipe, family, **overrides), handle.stats()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("first", ["interrupted", "one step"])
def test_generation_after_a_short_one_equals_a_fresh_pipeline(name, first):
    """A generation that ended on its first step leaves nothing behind: the next one gives the
    output, plans and step bookkeeping of a fresh pipeline with the same seed and config."""
    family = FAMILIES[name]
    config = SparseAttentionConfig(dense_steps=0, dense_layers=0, refresh_every=0, **checks.TINY)
    expected, expected_stats = fresh_run(family, config, num_inference_steps=4)
    pipe = family.build()
    handle = dit_sparse.apply(pipe, config)
    other_noise = torch.Generator().manual_seed(7)  # so that its plans differ from the next generation's
    if first == "interrupted":
        run(pipe, family, num_inference_steps=4, generator=other_noise, callback_on_step_end=stop_after_first_step)
    else:
        run(pipe, family, num_inference_steps=1, generator=other_noise)
    assert handle.stats().sparse_calls > 0  # the short generation ran sparse and left plans
    left_over = list(handle.runtimes["transformer"].cache.plans.values())
    assert torch.equal(run(pipe, family, num_inference_steps=4), expected)
    assert not any(new is old for new in handle.runtimes["transformer"].cache.plans.values() for old in left_over)
    stats = handle.stats()
    assert stats.steps == expected_stats.steps and stats.num_profiles == expected_stats.num_profiles


def test_two_one_step_flux_generations_with_every_step_dense_stay_dense():
    pipe = flux.build()
    stock = run(pipe, flux, num_inference_steps=1)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=1.0, **checks.TINY))
    for _ in range(2):
        assert torch.equal(run(pipe, flux, num_inference_steps=1), stock)
        assert handle.stats().sparse_calls == 0
        assert handle.stats().steps["transformer"] == {b: {"dense": [0], "sparse": []} for b in flux.BRANCHES}


def test_statistics_stay_readable_after_the_pipeline_call():
    pipe = wan.build()
    handle = dit_sparse.apply(pipe, SPARSE)
    run(pipe, wan)
    stats = handle.stats()
    assert stats.sparse_calls > 0 and stats.layers
    assert stats.steps["transformer"]["cond"] == {"dense": [0], "sparse": [1, 2]}


def build_wan22_image_to_video(boundary_ratio):
    """Wan 2.2 A14B image-to-video made tiny: two experts, the image as latent condition
    channels (no image encoder), `cache_context("cond")` without a step index."""
    components = wan.build().components

    def transformer():
        torch.manual_seed(0)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
            text_dim=wan.TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    return WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None, vae=components["vae"],
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), transformer=transformer(),
        transformer_2=transformer(), boundary_ratio=boundary_ratio,
    )


def test_wan22_image_to_video_experts_share_the_pipeline_step():
    """dense_steps=0.5 of 4 steps: steps 0-1 dense and 2-3 sparse, counted over both experts, so
    the low-noise expert runs its late steps sparse instead of starting a warm-up of its own."""
    pipe = build_wan22_image_to_video(boundary_ratio=0.95)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0.5, dense_layers=0, **checks.TINY))
    kwargs = wan.call_kwargs()
    kwargs.pop("num_frames")
    image = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    pipe(image=image, num_frames=9, **{**kwargs, "num_inference_steps": 4})
    steps = handle.stats().steps
    high, low = steps["transformer"]["cond"], steps["transformer_2"]["cond"]
    # the boundary (timestep 950 of 1000, 910 after step 0) falls inside the warm-up
    assert high == {"dense": [0], "sparse": []} and low == {"dense": [1], "sparse": [2, 3]}
    assert steps["transformer_2"]["uncond"] == low


def test_scheduler_clock_counts_steps_from_the_begin_index():
    """Image-to-image pipelines start the scheduler at `begin_index`: step 0 is the first one run."""
    scheduler = FlowMatchEulerDiscreteScheduler()
    clock = SchedulerClock(scheduler)
    scheduler.set_timesteps(10)
    scheduler.set_begin_index(4)
    first = clock.read()
    assert (first.step, first.num_steps) == (0, 6)
    sample = torch.zeros(1)
    scheduler.step(sample, scheduler.timesteps[4], sample)
    scheduler.step(sample, scheduler.timesteps[5], sample)
    assert clock.read().step == 2 and clock.read().timesteps is first.timesteps
    scheduler.set_timesteps(10)
    assert clock.read().timesteps is not first.timesteps  # a new generation


def test_bare_transformer_with_a_fraction_of_dense_steps_is_refused_up_front():
    pipe = flux.build()
    with pytest.raises(ValueError, match=r"dense_steps=0.2 is a fraction.*dit_sparse.apply\(pipe\)"):
        dit_sparse.apply(pipe.transformer)
    assert dit_sparse.hooks.attached(pipe.transformer) is None  # nothing was changed
    assert all(type(m.processor).__name__ == "FluxAttnProcessor" for _, m in flux.FLUX.self_attention(pipe.transformer))
    handle = dit_sparse.apply(pipe.transformer, SparseAttentionConfig(dense_steps=2, dense_layers=0, **checks.TINY))
    with pytest.raises(ValueError, match="fraction"):
        handle.set_config(SparseAttentionConfig(dense_steps=0.5))
    assert handle.config.dense_steps == 2 and handle.runtimes["transformer"].config.dense_steps == 2
    run(pipe, flux, num_inference_steps=4)
    assert handle.stats().steps["transformer"] == {b: {"dense": [0, 1], "sparse": [2, 3]} for b in flux.BRANCHES}
    dit_sparse.apply(pipe.transformer, SparseAttentionConfig(dense_steps=0.0, dense_layers=0, **checks.TINY))
    run(pipe, flux, num_inference_steps=2)
    assert handle.stats().dense_calls == 0


def test_pipeline_level_apply_takes_the_step_count_from_the_scheduler():
    """Flux passes no step count through the cache context; the default (fractional) config runs."""
    pipe = flux.build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0.5, dense_layers=0, **checks.TINY))
    run(pipe, flux, num_inference_steps=4)
    assert handle.stats().steps["transformer"] == {b: {"dense": [0, 1], "sparse": [2, 3]} for b in flux.BRANCHES}
