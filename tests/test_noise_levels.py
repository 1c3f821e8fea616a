"""The noise-level diagnosis of a demo model (dit_sparse.study.noise_levels) on the tiny pipeline."""

import numpy as np
import pytest
import torch

from dit_sparse.demo import build_pipeline, render_scenes, sample_scenes
from dit_sparse.study.noise_levels import _normalised_latents, finish_from_level, first_levels, flow_loss_by_level
from dit_sparse.study.prompt_following import generator_clip, round_trip


def test_mean_predictor_loss_is_the_clip_power_over_the_level_squared():
    """x_s / s misses the target by x0 / s, so its loss is E[x0^2] / s^2: checks the latent normalisation path."""
    pipe = build_pipeline("tiny")
    specs = sample_scenes(2, torch.Generator().manual_seed(0))
    clips = render_scenes(specs, 5, 32, 32)
    rows = flow_loss_by_level(pipe, clips, ["a red circle", "a blue square"], levels=(0.99, 0.5))
    vae = pipe.vae
    z = torch.cat([vae.encode(c[None]).latent_dist.mode() for c in clips])
    shape = (1, -1, 1, 1, 1)
    x0 = (z - torch.tensor(vae.config.latents_mean).view(shape)) / torch.tensor(vae.config.latents_std).view(shape)
    for row in rows:
        assert row["mean_predictor"] == pytest.approx(x0.pow(2).mean().item() / row["level"] ** 2, rel=1e-4)
        assert row["ratio"] == pytest.approx(row["model"] / row["mean_predictor"])


def test_a_larger_shift_keeps_the_first_steps_nearer_pure_noise():
    config = build_pipeline("tiny").scheduler.config
    low, high = first_levels(config, 3, 20), first_levels(config, 12, 20)
    assert low[0] == high[0] == pytest.approx(1.0, abs=1e-3)
    assert all(h > l for h, l in zip(high[1:], low[1:]))
    assert low[1] == pytest.approx(3 * 0.95 / (1 + 2 * 0.95), abs=2e-3)


def test_finishing_with_the_exact_velocity_gives_back_the_clip(monkeypatch):
    """A transformer that returns the true flow (x_s - x0) / s takes the Euler loop from any level to x0:
    the result is the VAE round trip of the generator's clip, as from level 0 (no step at all)."""
    pipe = build_pipeline("tiny")
    prompt = "a red circle moving right on a blue background"
    clip = torch.from_numpy(generator_clip(prompt, 5, 32, 32)).permute(3, 0, 1, 2)[None] * 2 - 1
    x0 = _normalised_latents(pipe.vae, clip)[0]

    def true_flow(hidden_states, timestep, encoder_hidden_states, return_dict=False):
        return ((hidden_states - x0) / (timestep.view(-1, 1, 1, 1, 1) / 1000),)

    monkeypatch.setattr(pipe.transformer, "forward", true_flow)
    at_zero = finish_from_level(pipe, prompt, 0.0, 8, 5.0, 5, 32, 32)
    assert at_zero.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(at_zero, round_trip(pipe.vae, generator_clip(prompt, 5, 32, 32)), atol=1e-5)
    for level in (0.5, 0.97):
        np.testing.assert_allclose(finish_from_level(pipe, prompt, level, 8, 5.0, 5, 32, 32), at_zero, atol=1e-4)
