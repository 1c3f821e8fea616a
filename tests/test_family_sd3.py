import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.geometry import TokenGrid

import family_checks as checks

TEXT_DIM, POOLED_DIM, TEXT_LEN = 32, 16, 8
NUM_LAYERS = 3


BRANCHES = ["0"]  # batched CFG without a cache context: one branch, named by its ordinal

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


def test_joint_and_image_only_attention_layers():
    """`attn` of block i is layer i over image + text; `attn2` of block i is layer 3 + i over
    the image tokens alone."""
    pipe = build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY))
    blocks = pipe.transformer.transformer_blocks
    assert [b.attn.processor.layer for b in blocks] == [0, 1, 2]
    assert [b.attn2.processor.layer for b in blocks[:2]] == [3, 4] and blocks[2].attn2 is None
    assert blocks[0].attn.processor is not blocks[0].attn2.processor
    pipe(**{**call_kwargs(), "num_inference_steps": 1})
    runtime = handle.runtimes["transformer"]
    assert {layer for layer, _ in runtime.cache.plans} == {0, 1, 2, 3, 4}
    plans = runtime.cache.plans
    assert all(plans[(i, 0)].grid == TokenGrid(1, 12, 8, TEXT_LEN, "suffix") for i in range(3))
    assert all(plans[(i, 0)].grid == TokenGrid(1, 12, 8) for i in (3, 4))
    assert all(plans[(i, 0)].shape == (2, 2, 96 + TEXT_LEN) for i in range(3))  # batched CFG: B = 2
