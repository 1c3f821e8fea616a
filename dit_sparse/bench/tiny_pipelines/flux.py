"""Tiny FLUX.1 pipeline: 2 dual- and 2 single-stream blocks, true CFG, 8 x 12 packed image tokens."""

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

TEXT_DIM, POOLED_DIM, TEXT_LEN = 32, 32, 8
HEIGHT, WIDTH = 16, 24  # pixels; the VAE below does not downsample, packing halves: 8 x 12 tokens


def build():
    """FLUX.1 with a VAE that does not downsample."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
        axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def call_kwargs():
    """True CFG (a negative prompt and true_cfg_scale > 1): the pipeline calls "cond" then "uncond"."""
    gen = torch.Generator().manual_seed(0)
    return dict(
        prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        negative_prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        negative_pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=gen),
        true_cfg_scale=2.0, height=HEIGHT, width=WIDTH, num_inference_steps=3,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )
