import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.families.flux import FLUX, SparseFluxAttnProcessor
from dit_sparse.geometry import TokenGrid

import family_checks as checks

TEXT_DIM, POOLED_DIM, TEXT_LEN = 32, 32, 8
HEIGHT, WIDTH = 16, 24  # pixels; the VAE below does not downsample, packing halves: 8 x 12 tokens


BRANCHES = ["cond", "uncond"]  # CFG branches as the runtime names them

def build():
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


def test_dual_and_single_stream_blocks_are_one_layer_sequence():
    pipe = build()
    layers = FLUX.self_attention(pipe.transformer)
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    assert [i for i, _ in layers] == list(range(4))
    assert [m for _, m in layers] == [b.attn for b in blocks]
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, **checks.TINY))
    assert all(isinstance(b.attn.processor, SparseFluxAttnProcessor) for b in blocks)
    pipe(**call_kwargs())
    assert sorted({layer for layer, _ in handle.runtimes["transformer"].cache.plans}) == [0, 1, 2, 3]


def test_grid_matches_attention_sequence():
    """The grid from img_ids is (1, 8, 12) tokens plus an 8-token text prefix, and it counts
    exactly the tokens every processor passes to attention (dual- and single-stream)."""
    pipe = build()
    dit_sparse.apply(pipe, SparseAttentionConfig(dense_layers=0, **checks.TINY))
    with checks.recording_sparse_calls() as seen:
        pipe(**{**call_kwargs(), "num_inference_steps": 1})
    expected = TokenGrid(1, HEIGHT // 2, WIDTH // 2, TEXT_LEN, "prefix")
    assert len(seen) == 2 * 4  # cond and uncond, four layers
    assert all(grid == expected and shape[2] == grid.num_tokens for grid, shape in seen)


def test_grid_gives_none_for_non_raster_ids():
    """Ids that are not one raster image (e.g. Kontext's appended reference) give no grid."""
    pipe = build()
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 6, "cpu", torch.float32)
    hidden, text = torch.zeros(1, 24, 4), torch.zeros(1, 5, TEXT_DIM)
    assert FLUX.grid(pipe.transformer, dict(hidden_states=hidden, encoder_hidden_states=text, img_ids=ids)) == \
        TokenGrid(1, 4, 6, 5, "prefix")
    reference = ids.clone()
    reference[:, 0] = 1
    both = torch.cat([ids, reference])
    assert FLUX.grid(pipe.transformer, dict(hidden_states=torch.zeros(1, 48, 4), encoder_hidden_states=text,
                                            img_ids=both)) is None
    assert FLUX.grid(pipe.transformer, dict(hidden_states=hidden, encoder_hidden_states=text,
                                            img_ids=ids.flip(0))) is None
