import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.geometry import TokenGrid

import family_checks as checks

TEXT_DIM = 32
TEXT_LEN = 16


BRANCHES = ["cond_uncond"]  # CFG branches as the runtime names them

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


def seen_by_attention(pipe, kwargs):
    """(grid, q shape) of every sparse-runtime call of one generation."""
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, **checks.TINY))
    assert handle.stats().sparse_calls == 0
    with checks.recording_sparse_calls() as seen:
        pipe(**kwargs)
    return seen


def test_grid_matches_the_sequence_attention_sees():
    seen = seen_by_attention(build(), call_kwargs())
    assert len(seen) == 3 * 3  # 3 layers x 3 steps, CFG batched
    for grid, shape in seen:
        assert grid == TokenGrid(3, 4, 4, TEXT_LEN, "prefix")
        assert shape == (2, 2, grid.num_tokens, 16)


def test_cogvideox15_temporal_patching():
    seen = seen_by_attention(build(patch_size_t=2), call_kwargs_15())
    assert seen and all(grid == TokenGrid(3, 4, 4, TEXT_LEN, "prefix") and shape[2] == grid.num_tokens
                        for grid, shape in seen)
    checks.check_sparse_path_with_full_bands_matches_stock(lambda: build(patch_size_t=2), call_kwargs_15)


def test_fused_qkv_projections():
    checks.check_all_dense_steps_are_identical(lambda: build(fused=True), call_kwargs)
    checks.check_remove_restores_processors(lambda: build(fused=True), call_kwargs)
