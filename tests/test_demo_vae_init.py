"""vae_init.block_average_init: an untrained Wan VAE that encodes 8x8 block means and paints them back."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from dit_sparse.demo import build_pipeline
from dit_sparse.demo.scenes import render_scenes, sample_scenes
from dit_sparse.demo.vae_init import block_average_init

ROOT = Path(__file__).resolve().parents[1]


def small_vae(**changes):
    config = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    return AutoencoderKLWan(**{**config, **changes})


def psnr(a, b):
    return -10 * math.log10(F.mse_loss(a, b).item() / 4)


@torch.no_grad()
def test_latents_are_block_means_and_decode_back_to_them():
    vae = block_average_init(small_vae()).eval()
    clips = render_scenes(sample_scenes(2, torch.Generator().manual_seed(1)), 9, 48, 64)
    posterior = vae.encode(clips).latent_dist
    assert posterior.mean.shape == (2, 16, 3, 6, 8) and posterior.std.max() < 0.01
    means = F.avg_pool3d(clips, (1, 8, 8))
    for step in (1, 2):  # latent step s holds frames 4s-3 .. 4s at channels 3f + colour
        for f in range(4):
            torch.testing.assert_close(posterior.mean[:, 3 * f : 3 * f + 3, step], means[:, :, 4 * step - 3 + f],
                                       atol=0.1, rtol=0)
        torch.testing.assert_close(posterior.mean[:, 12:15, step], means[:, :, 4 * step - 3 : 4 * step + 1].mean(2),
                                   atol=0.1, rtol=0)
    for channel in range(12):  # the first frame is its own latent step, in every frame slot
        torch.testing.assert_close(posterior.mean[:, channel, 0], means[:, channel % 3, 0], atol=0.1, rtol=0)
    recon = vae.decode(posterior.mode()).sample
    blocks = F.interpolate(means, scale_factor=(1, 8, 8), mode="nearest")
    assert recon.shape == clips.shape
    assert psnr(recon, clips) > psnr(blocks, clips) - 0.5 > 15
    assert psnr(recon, blocks) > 25  # block means, smoothed at the block edges


@torch.no_grad()
def test_without_init_the_same_vae_passes_nothing():
    vae = small_vae().eval()
    clips = render_scenes(sample_scenes(2, torch.Generator().manual_seed(1)), 5, 32, 32)
    recon = vae.decode(vae.encode(clips).latent_dist.mode()).sample
    assert psnr(recon, clips) < 13


@pytest.mark.parametrize("changes", [dict(z_dim=4), dict(is_residual=True), dict(dim_mult=[1, 2, 4]),
                                     dict(base_dim=4)])
def test_other_layouts_are_refused(changes):
    if "dim_mult" in changes:
        changes["temperal_downsample"] = [False, True]
    with pytest.raises(ValueError, match="block_average_init"):
        block_average_init(small_vae(**changes))


def test_demo2_starts_as_the_codec_and_training_that_hurts_it_is_undone(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train.main(["--size", "demo2", "--data", "scenes", "--stage", "vae", "--steps", "2", "--num-frames", "5",
                "--resolution", "32", "--vae-crop", "32", "--batch-size", "1", "--stats-clips", "2", "--warmup", "1",
                "--vae-lr", "1.0", "--device", "cpu", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    start = float(out.split("held-out reconstruction at the start: psnr ")[1].split(" dB")[0])
    after = float(out.split("held-out reconstruction after 2 steps: psnr ")[1].split(" dB")[0])
    assert start > 15 > after  # lr 1.0 wrecks the codec
    assert "back to the starting weights" in out
    saved = AutoencoderKLWan.from_pretrained(tmp_path / "run", subfolder="vae").state_dict()
    fresh = build_pipeline("demo2").vae.state_dict()
    for key in ("encoder.conv_out.weight", "decoder.up_blocks.0.upsamplers.0.time_conv.weight", "decoder.conv_out.bias"):
        torch.testing.assert_close(saved[key].float(), fresh[key], atol=1e-3, rtol=1e-3)
