"""Tiny SD3.5-like pipeline (no VAE): 3 joint blocks, dual attention in blocks 0 and 1, batched CFG."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

TEXT_DIM, POOLED_DIM, TEXT_LEN = 32, 16, 8
NUM_LAYERS = 3


def build():
    """SD3.5-like: qk norms, and dual attention (`attn2`) in blocks 0 and 1."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=NUM_LAYERS, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16, pooled_projection_dim=POOLED_DIM,
        pos_embed_max_size=32, dual_attention_layers=(0, 1), qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )


def call_kwargs():
    """Batched CFG (one transformer call per step); 192 x 128 pixels, latent 24 x 16, patch 2:
    12 x 8 = 96 image tokens, then 8 text tokens."""
    gen = torch.Generator().manual_seed(0)
    return dict(
        prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        negative_prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        negative_pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        height=192, width=128, num_inference_steps=3, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )
