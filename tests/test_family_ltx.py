import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.families.ltx import LTX
from dit_sparse.geometry import TokenGrid

import family_checks as checks

TEXT_DIM = 32
TEXT_LEN = 8


BRANCHES = ["cond_uncond"]  # CFG branches as the runtime names them

def build():
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


def test_grid_matches_the_sequence_attention_sees():
    pipe = build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, **checks.TINY))
    assert handle.stats().sparse_calls == 0
    with checks.recording_sparse_calls() as seen:
        pipe(**call_kwargs())
    assert len(seen) == 3 * 3  # 3 layers x 3 steps, CFG batched; cross-attention never asks
    for grid, shape in seen:
        assert grid == TokenGrid(3, 8, 8)
        assert shape == (2, 2, grid.num_tokens, 12)
    for block in pipe.transformer.transformer_blocks:
        assert type(block.attn2.processor) is LTXVideoAttnProcessor


def test_grid_is_none_when_sizes_do_not_describe_the_sequence():
    pipe = build()
    grid = LTX.grid
    hidden = torch.zeros(1, 192, 8)
    assert grid(pipe.transformer, dict(hidden_states=hidden, num_frames=3, height=8, width=8)) == TokenGrid(3, 8, 8)
    assert grid(pipe.transformer, dict(hidden_states=hidden, num_frames=None, height=8, width=8)) is None
    assert grid(pipe.transformer, dict(hidden_states=torch.zeros(1, 200, 8), num_frames=3, height=8, width=8)) is None
