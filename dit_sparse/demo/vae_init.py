"""Starts a demo Wan VAE as a block-average video codec, so that training refines a codec that works.

From random weights, the demo VAE stays below a mean-colour predictor for hundreds of steps
(docs/results/demo2_attempt1): no transformer on top of it can follow a prompt. Set up here, every
residual branch of AutoencoderKLWan starts at zero (a block's second convolution, the attention's
output projection), and the convolutions on the main path copy, average and shuffle channels:

- the encoder writes the 8x8 mean colour of each of the four frames of a latent step into latent
  channels 0-11 (frame f, colour c at 3f + c), their mean over the four frames into 12-14 and the
  grey level into 15, with a posterior variance of about 6e-6;
- the decoder paints channels 0-11 back, each frame from its own three channels.

So the untrained VAE reconstructs each frame as its 8x8 block averages. The two output heads (RMS
norm, then SiLU) see the signal shifted by OFFSET beside one large constant CARRIER channel, which
keeps them close to linear. Only the architecture of the demo sizes is handled: dim_mult [1, 2, 4, 4],
temporal downsampling [False, True, True], z_dim 16.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResample, WanResidualBlock

OFFSET = 1.5  # signal in [-1, 1] rides at [0.5, 2.5]: positive through the SiLU heads
CARRIER = 30.0  # constant channel that makes the heads' RMS norm nearly a fixed scale
HEAD_GAIN = 8.0  # signal x gain enters the heads' SiLU at >= 4, where SiLU is almost the identity
LOGVAR = -12.0


def _taps(conv: torch.nn.Module, pairs, tap=None, weight: float = 1.0):
    """Adds `weight` to conv.weight[out, in][tap] for each (out, in); tap defaults to the current-frame centre."""
    w = conv.weight
    if tap is None:
        tap = (w.shape[2] - 1,) + tuple(k // 2 for k in w.shape[3:]) if w.dim() == 5 else tuple(k // 2 for k in w.shape[2:])
    for out, inp in pairs:
        w[(out, inp) + tuple(tap)] += weight


def _zero(*modules):
    for module in modules:
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()


def _avg_2x2(conv: torch.nn.Conv2d, channels):
    """Stride-2 3x3 convolution after a (0, 1, 0, 1) zero pad: exactly the 2x2 mean of each channel."""
    for a in (0, 1):
        for b in (0, 1):
            _taps(conv, [(c, c) for c in channels], (a, b), 0.25)


def _tent(conv: torch.nn.Conv2d, pairs):
    """3x3 [1, 2, 1] x [1, 2, 1] / 16 filter for each (out, in): after a nearest 2x upsampling, a smooth one."""
    for a in range(3):
        for b in range(3):
            _taps(conv, pairs, (a, b), (2 - abs(a - 1)) * (2 - abs(b - 1)) / 16)


def _head_gain(norm, signal):
    """RMS-norm gamma that maps a signal channel at OFFSET, beside the carrier, to HEAD_GAIN x its value."""
    typical = (CARRIER**2 + len(signal) * OFFSET**2) ** 0.5
    norm.gamma.data.fill_(1.0)
    norm.gamma.data.view(-1)[list(signal)] = HEAD_GAIN * typical / norm.scale
    if isinstance(norm.bias, torch.Tensor):
        norm.bias.data.zero_()


def _check(vae: AutoencoderKLWan):
    cfg = vae.config
    if list(cfg.dim_mult) != [1, 2, 4, 4] or list(cfg.temperal_downsample) != [False, True, True] or cfg.z_dim != 16:
        raise ValueError("block_average_init handles dim_mult [1, 2, 4, 4], temperal_downsample [False, True, True], z_dim 16")
    if cfg.is_residual or cfg.patch_size is not None or cfg.in_channels != 3 or cfg.out_channels != 3:
        raise ValueError("block_average_init handles the Wan 2.1 VAE layout (3 colour channels, no patching, not residual)")
    if cfg.base_dim < 8:
        raise ValueError("block_average_init needs base_dim >= 8 (room for the signal and the carrier)")


@torch.no_grad()
def block_average_init(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """Sets `vae`'s weights so that it encodes each frame's 8x8 block means and decodes them back (in place)."""
    _check(vae)

    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            _zero(module.conv2)
            if not isinstance(module.conv_shortcut, torch.nn.Identity):
                _zero(module.conv_shortcut)
        elif isinstance(module, WanAttentionBlock):
            _zero(module.proj)
        elif isinstance(module, WanResample):
            _zero(module.resample[1])
            if hasattr(module, "time_conv"):
                _zero(module.time_conv)
    enc, dec = vae.encoder, vae.decoder
    rgb = range(3)
    base = vae.config.base_dim
    dims = [base * m for m in (1, 1, 2, 4)]  # encoder widths: conv_in, level 0, level 1, level 2 and on
    top = [d - 1 for d in dims]  # the carrier rides in each width's last channel

    _zero(enc.conv_in)
    _taps(enc.conv_in, [(c, c) for c in rgb])
    enc.conv_in.bias[:3] = OFFSET
    enc.conv_in.bias[top[0]] = CARRIER
    shortcuts = [b.conv_shortcut for b in enc.down_blocks if isinstance(b, WanResidualBlock)
                 and not isinstance(b.conv_shortcut, torch.nn.Identity)]  # level 1's and level 2's widening
    down2d, down3d_1, down3d_2 = (b for b in enc.down_blocks if isinstance(b, WanResample))
    _avg_2x2(down2d.resample[1], [*rgb, top[1]])
    _taps(shortcuts[0], [(c, c) for c in rgb] + [(3 + c, c) for c in rgb] + [(top[2], top[1])])
    _avg_2x2(down3d_1.resample[1], [*range(6), top[2]])
    _taps(down3d_1.time_conv, [(c, c) for c in rgb], (1, 0, 0))  # the even frame of each pair
    _taps(down3d_1.time_conv, [(3 + c, 3 + c) for c in rgb] + [(top[2], top[2])], (2, 0, 0))  # the odd one
    _taps(shortcuts[1], [(j, j) for j in range(6)] + [(6 + j, j) for j in range(6)] + [(top[3], top[2])])
    _avg_2x2(down3d_2.resample[1], [*range(12), top[3]])
    _taps(down3d_2.time_conv, [(j, j) for j in range(6)], (1, 0, 0))  # the first pair
    _taps(down3d_2.time_conv, [(6 + j, 6 + j) for j in range(6)] + [(top[3], top[3])], (2, 0, 0))  # the second
    _head_gain(enc.norm_out, range(12))
    _zero(enc.conv_out)
    z = vae.config.z_dim
    _taps(enc.conv_out, [(j, j) for j in range(12)], weight=1 / HEAD_GAIN)
    for c in rgb:
        _taps(enc.conv_out, [(12 + c, 3 * f + c) for f in range(4)], weight=1 / (4 * HEAD_GAIN))
    _taps(enc.conv_out, [(15, j) for j in range(12)], weight=1 / (12 * HEAD_GAIN))
    enc.conv_out.bias[:z] = -OFFSET
    enc.conv_out.bias[z:] = LOGVAR
    _zero(vae.quant_conv, vae.post_quant_conv)
    _taps(vae.quant_conv, [(j, j) for j in range(2 * z)])
    _taps(vae.post_quant_conv, [(j, j) for j in range(z)])

    wide, mid, narrow = base * 4, base * 2, base  # decoder widths: 4b through up block 1, then 2b, then b
    _zero(dec.conv_in)
    _taps(dec.conv_in, [(j, j) for j in range(12)])
    dec.conv_in.bias[:12] = OFFSET
    dec.conv_in.bias[wide - 1] = CARRIER
    up0, up1, up2 = (dec.up_blocks[i].upsamplers[0] for i in range(3))
    _taps(up0.time_conv, [(j, j) for j in range(6)] + [(wide + j, 6 + j) for j in range(6)]
          + [(wide - 1, wide - 1), (2 * wide - 1, wide - 1)])
    _tent(up0.resample[1], [(j, j) for j in range(6)] + [(mid - 1, wide - 1)])
    _taps(dec.up_blocks[1].resnets[0].conv_shortcut, [(j, j) for j in range(6)] + [(wide - 1, mid - 1)])
    _taps(up1.time_conv, [(c, c) for c in rgb] + [(wide + c, 3 + c) for c in rgb]
          + [(wide - 1, wide - 1), (2 * wide - 1, wide - 1)])
    _tent(up1.resample[1], [(c, c) for c in rgb] + [(mid - 1, wide - 1)])
    _tent(up2.resample[1], [(c, c) for c in rgb] + [(narrow - 1, mid - 1)])
    _head_gain(dec.norm_out, rgb)
    _zero(dec.conv_out)
    _taps(dec.conv_out, [(c, c) for c in rgb], weight=1 / HEAD_GAIN)
    dec.conv_out.bias[:] = -OFFSET
    return vae
