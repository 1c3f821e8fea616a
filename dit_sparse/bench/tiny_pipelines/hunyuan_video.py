"""Tiny HunyuanVideo pipeline (no VAE): 2 dual- and 2 single-stream blocks, padded prompts, true CFG."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

TEXT_DIM, POOLED_DIM, TEXT_LEN = 16, 8, 12
DUAL, SINGLE = 2, 2


def build():
    """HunyuanVideo with embedded guidance and a one-layer text refiner."""
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=DUAL,
        num_single_layers=SINGLE, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM, rope_axes_dim=(4, 6, 6),
    )
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None)


def text_mask(*valid):
    """(len(valid), TEXT_LEN) mask with the first n tokens of each row valid, the rest padding."""
    return (torch.arange(TEXT_LEN) < torch.tensor(valid)[:, None]).float()


def call_kwargs(cond_valid=(9,), uncond_valid=(5,)):
    """Padded prompts (9 and 5 of 12 text tokens valid) with true CFG: cond then uncond calls.
    3 latent frames of 6 x 6 tokens (latent 12 x 12, patch 2) = 108 video tokens."""
    gen = torch.Generator().manual_seed(0)
    batch = len(cond_valid)
    return dict(
        prompt_embeds=torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen),
        pooled_prompt_embeds=torch.randn(batch, POOLED_DIM, generator=gen),
        prompt_attention_mask=text_mask(*cond_valid),
        negative_prompt_embeds=torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen),
        negative_pooled_prompt_embeds=torch.randn(batch, POOLED_DIM, generator=gen),
        negative_prompt_attention_mask=text_mask(*uncond_valid),
        height=96, width=96, num_frames=9, num_inference_steps=3, guidance_scale=6.0, true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )
