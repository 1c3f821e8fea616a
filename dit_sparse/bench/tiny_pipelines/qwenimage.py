"""Tiny Qwen-Image pipeline: 3 layers, cond and uncond prompts of different lengths."""

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

TEXT_DIM, Z_DIM = 16, 4
HEIGHT, WIDTH = 64, 96  # pixels; the VAE below downsamples 4x, packing halves: 8 x 12 tokens
ROWS, COLS = HEIGHT // 8, WIDTH // 8
COND_LEN, UNCOND_LEN = 7, 11  # the two CFG branches have different text lengths


def build():
    """Qwen-Image with its VAE (4x downsampling), 3 layers."""
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * Z_DIM, out_channels=Z_DIM, num_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=Z_DIM * 6, z_dim=Z_DIM, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM,
    )
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                             transformer=transformer)


def call_kwargs(cond_len=COND_LEN, uncond_len=UNCOND_LEN, cond_mask=None, cfg=True, num_inference_steps=3):
    """With cfg, true CFG (a negative prompt and true_cfg_scale > 1): the pipeline calls "cond"
    then "uncond". All-ones masks: the pipeline passes None to the transformer."""
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(
        prompt_embeds=torch.randn(1, cond_len, TEXT_DIM, generator=gen),
        prompt_embeds_mask=torch.ones(1, cond_len, dtype=torch.long) if cond_mask is None else cond_mask,
        height=HEIGHT, width=WIDTH, num_inference_steps=num_inference_steps,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )
    if cfg:
        kwargs.update(negative_prompt_embeds=torch.randn(1, uncond_len, TEXT_DIM, generator=gen),
                      negative_prompt_embeds_mask=torch.ones(1, uncond_len, dtype=torch.long), true_cfg_scale=4.0)
    return kwargs
