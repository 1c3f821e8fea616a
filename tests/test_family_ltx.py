import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.families.ltx import LTX
from dit_sparse.geometry import TokenGrid
from dit_sparse.bench.tiny_pipelines.ltx import build, call_kwargs

import family_checks as checks


BRANCHES = ["cond_uncond"]  # CFG branches as the runtime names them


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
