import torch
from diffusers import FluxPipeline

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.families.flux import FLUX, SparseFluxAttnProcessor
from dit_sparse.geometry import TokenGrid
from dit_sparse.bench.tiny_pipelines.flux import HEIGHT, TEXT_DIM, TEXT_LEN, WIDTH, build, call_kwargs

import family_checks as checks


BRANCHES = ["cond", "uncond"]  # CFG branches as the runtime names them


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
