"""Tiny LTX-Video pipeline: 3 layers, patch 1, a padded prompt (masked cross-attention only)."""

import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

TEXT_DIM = 32
TEXT_LEN = 8


def build():
    """LTX-Video with its causal VAE, 3 layers."""
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=12,
        cross_attention_dim=24, num_layers=3, caption_channels=TEXT_DIM,
    )
    return LTXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler())


def call_kwargs():
    """32x32 pixels -> 8x8 latent tokens per frame (compression 4, patch 1); 9 frames -> 3."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.long)
    mask[:, 6:] = 0  # padded prompt: the cross-attention gets a mask, the self-attention none
    return dict(
        prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen), prompt_attention_mask=mask,
        negative_prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        negative_prompt_attention_mask=torch.ones(1, TEXT_LEN, dtype=torch.long),
        height=32, width=32, num_frames=9, num_inference_steps=3, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )
