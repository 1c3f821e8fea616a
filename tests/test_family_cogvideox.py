import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.geometry import TokenGrid
from dit_sparse.bench.tiny_pipelines.cogvideox import TEXT_LEN, build, call_kwargs, call_kwargs_15

import family_checks as checks


BRANCHES = ["cond_uncond"]  # CFG branches as the runtime names them


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
