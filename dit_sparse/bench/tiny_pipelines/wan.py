"""Tiny Wan 2.1 text-to-video pipeline (Wan 2.2 with `transformer_2=True`): 3 layers, 17 frames of 64x64."""

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

TEXT_DIM = 32


def build(transformer_2=False):
    """Wan 2.1 (one transformer) or, with `transformer_2`, Wan 2.2 A14B's two experts split at the boundary 0.5."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    extra = dict(transformer_2=transformer(), boundary_ratio=0.5) if transformer_2 else {}
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), **extra)


def call_kwargs():
    """CFG with cond and uncond calls; 64x64 pixels, 17 frames, 8 text tokens."""
    gen = torch.Generator().manual_seed(0)
    return dict(
        prompt_embeds=torch.randn(1, 8, TEXT_DIM, generator=gen), negative_prompt_embeds=torch.randn(1, 8, TEXT_DIM, generator=gen),
        height=64, width=64, num_frames=17, num_inference_steps=3, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )
