import math

import pytest
import torch
import torch.nn.functional as F

from dit_sparse import PlanCache, SparseAttentionConfig, TokenGrid, profile_heads
from dit_sparse import plan_cache as plan_cache_module

PLANTED = ["spatial", "temporal", "dense", "temporal", "spatial"]


def planted_qkv(grid: TokenGrid, kinds=PLANTED, D=64, B=2, strength=7.0, seed=0):
    """q, k, v whose heads attend as `kinds` say: spatial heads match tokens of the same frame
    (images: row), temporal heads tokens at the same position (images: column), dense heads
    attend uniformly. Text tokens carry small random keys."""
    gen = torch.Generator().manual_seed(seed)
    order = grid.order
    S, s0, n_video = grid.num_tokens, order.video_start, order.frames * order.positions
    j = torch.arange(n_video)
    group = {"spatial": j // order.positions, "temporal": j % order.positions}
    basis = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]  # orthonormal rows
    q = torch.randn(B, len(kinds), S, D, generator=gen) * 0.1
    k = torch.randn(B, len(kinds), S, D, generator=gen) * 0.1
    for h, kind in enumerate(kinds):
        if kind == "dense":
            q[:, h] = 0.0
            continue
        vec = basis[group[kind] % D] * strength
        q[:, h, s0 : s0 + n_video] += vec
        k[:, h, s0 : s0 + n_video] += vec
    v = torch.randn(B, len(kinds), S, D, generator=gen)
    return q, k, v


GRIDS = [
    TokenGrid(frames=8, height=4, width=8),
    TokenGrid(frames=8, height=4, width=8, text_len=16, text_position="prefix"),
    TokenGrid(frames=6, height=5, width=7, text_len=11, text_position="suffix"),
    TokenGrid(frames=1, height=16, width=24),
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g.frames}x{g.height}x{g.width}-{g.text_position}")
def test_planted_heads_are_named_and_attended_right(grid):
    config = SparseAttentionConfig(block_size=16, num_sampled_queries=48)
    q, k, v = planted_qkv(grid)
    plan = profile_heads(q, k, v, grid, config)
    assert plan.kinds == [PLANTED, PLANTED]
    assert plan.density.shape == (2, len(PLANTED))
    for b in range(2):
        for h, kind in enumerate(PLANTED):
            assert (plan.density[b, h] == 1.0) == (kind == "dense")
    assert plan.density.min() < 0.5  # the sparse heads really are sparse

    exact = F.scaled_dot_product_attention(q, k, v)
    # the Triton kernel (interpreted on the CPU: slow) on the grid with a text prefix only
    for backend in ("torch", "triton") if grid == GRIDS[1] else ("torch",):
        plan.backend = backend
        out = plan.attend(q, k, v)
        # a kept mass of at least `recall` bounds the error by 2 (1 - recall) max|v|
        bound = 2 * (1 - config.recall) * v.abs().max()
        assert (out - exact).abs().max() <= bound
        text = slice(0, grid.text_len) if grid.text_position == "prefix" else slice(grid.num_video_tokens, None)
        if grid.text_len:  # text query rows attend everything: exact
            torch.testing.assert_close(out[:, :, text], exact[:, :, text], atol=1e-5, rtol=1e-4)


def test_recall_one_accepts_nothing_and_attend_is_exact():
    grid = GRIDS[1]
    q, k, v = planted_qkv(grid)
    plan = profile_heads(q, k, v, grid, SparseAttentionConfig(block_size=16, recall=1.0))
    assert all(kind == "dense" for row in plan.kinds for kind in row)
    assert torch.equal(plan.attend(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_fixed_density_sizes_bands_and_picks_the_better_kind():
    grid = GRIDS[0]
    q, k, v = planted_qkv(grid, kinds=["spatial", "temporal"])
    plan = profile_heads(q, k, v, grid, SparseAttentionConfig(block_size=16, density=0.3))
    assert plan.kinds == [["spatial", "temporal"]] * 2
    assert len(plan.bank.candidates) == 2  # one band per kind, no dense fallback
    assert ((plan.density - 0.3).abs() < 0.15).all() and (plan.density >= 0.3).all()


def test_wrong_length_is_a_clear_error():
    grid = GRIDS[0]
    q = torch.randn(1, 2, grid.num_tokens + 1, 16)
    with pytest.raises(ValueError, match="grid has 8 x 4 x 8 video"):
        profile_heads(q, q, q, grid)


def count_profiles(monkeypatch):
    calls = []
    real = plan_cache_module.choose_patterns

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_cache_module, "choose_patterns", counting)
    return calls


def run_generation(cache, grid, num_steps, layers=3, branches=(0, 1), qkv=None):
    q, k, v = qkv or planted_qkv(grid, B=1)
    modes = []
    for step in range(num_steps):
        for layer in range(layers):
            for branch in branches:
                out = cache.attend(q, k, v, layer=layer, branch=branch, step=step, num_steps=num_steps, grid=grid)
                modes.append((step, layer, branch, out is None))
    return modes


@pytest.mark.parametrize("refresh_every,profiles_per_key", [(3, 3), (1, 8), (0, 1)])
def test_plan_cache_profiles_exactly_when_the_config_says(monkeypatch, refresh_every, profiles_per_key):
    calls = count_profiles(monkeypatch)
    grid = TokenGrid(frames=4, height=4, width=4)
    config = SparseAttentionConfig(block_size=16, dense_steps=0.2, dense_layers=1, refresh_every=refresh_every)
    cache = PlanCache(config)
    modes = run_generation(cache, grid, num_steps=10)
    # steps 0-1 (20% of 10) and layer 0 are dense; sparse steps 2..9 profile at 2, 2+r, ...
    for step, layer, branch, dense in modes:
        assert dense == (step < 2 or layer == 0)
    assert len(calls) == 2 * 2 * profiles_per_key == cache.num_profiles
    assert cache.dense_calls == 10 * 2 + 2 * 2 * 2 and cache.sparse_calls == 8 * 2 * 2
    # every plan names the same planted heads, so the mean over calls is one plan's density
    first = cache.history[0]
    assert cache.mean_density() == pytest.approx(first.bank.density_of(first.patterns).mean().item())
    assert 0 < cache.mean_density() < 1
    cache.reset()
    assert not cache.plans and cache.num_profiles == 0 and cache.mean_density() is None


def test_plan_cache_reprofiles_on_a_new_grid_or_batch(monkeypatch):
    calls = count_profiles(monkeypatch)
    cache = PlanCache(SparseAttentionConfig(block_size=16, dense_steps=0, dense_layers=0, refresh_every=0))
    small, large = TokenGrid(4, 4, 4), TokenGrid(4, 4, 8)
    q, k, v = planted_qkv(small, B=1)
    cache.attend(q, k, v, layer=0, branch=0, step=0, num_steps=4, grid=small)
    cache.attend(q, k, v, layer=0, branch=0, step=1, num_steps=4, grid=small)
    assert len(calls) == 1
    q2, k2, v2 = planted_qkv(large, B=1)
    out = cache.attend(q2, k2, v2, layer=0, branch=0, step=2, num_steps=4, grid=large)
    assert len(calls) == 2 and out.shape == q2.shape
    qb, kb, vb = planted_qkv(large, B=2)
    cache.attend(qb, kb, vb, layer=0, branch=0, step=3, num_steps=4, grid=large)
    assert len(calls) == 3


def test_fractional_dense_steps_need_the_step_count():
    cache = PlanCache(SparseAttentionConfig(dense_steps=0.2, dense_layers=0))
    with pytest.raises(ValueError, match="dense_steps=0.2"):
        cache.is_dense(layer=3, step=0, num_steps=None)
    assert PlanCache(SparseAttentionConfig(dense_steps=2, dense_layers=0)).is_dense(3, 1, None)
