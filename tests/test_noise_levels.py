"""The noise-level diagnosis of a demo model (dit_sparse.study.noise_levels) on the tiny pipeline."""

import pytest
import torch

from dit_sparse.demo import build_pipeline, render_scenes, sample_scenes
from dit_sparse.study.noise_levels import first_levels, flow_loss_by_level


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
