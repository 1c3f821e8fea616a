"""Tiny CogVideoX 1.0 / 1.5 pipeline with RoPE: 3 layers, batched CFG."""

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

TEXT_DIM = 32
TEXT_LEN = 16


def build(patch_size_t=None, fused=False):
    """CogVideoX 1.0 (patch_size_t=None) or 1.5 (patch_size_t=2), with RoPE, 3 layers."""
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=TEXT_DIM, num_layers=3, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        patch_size_t=patch_size_t, temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=True,
    )
    if fused:
        transformer.fuse_qkv_projections()
    return CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


def call_kwargs(num_frames=9):
    """64x64 pixels -> 8x8 latents -> 4x4 tokens per frame; 9 frames -> 3 latent frames."""
    gen = torch.Generator().manual_seed(0)
    return dict(
        prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        negative_prompt_embeds=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen),
        height=64, width=64, num_frames=num_frames, num_inference_steps=3, guidance_scale=6.0,
        generator=torch.Generator().manual_seed(1), output_type="latent",
    )


def call_kwargs_15():
    """21 frames -> 6 latent frames -> 3 token frames with patch_size_t=2."""
    return call_kwargs(num_frames=21)
