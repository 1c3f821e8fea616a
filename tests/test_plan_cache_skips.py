"""PlanCache when a step cache skips decided calls: only calls that ran age a plan, count, or
adopt a profile; a profile decided for a skipped call is decided again at the next call."""

import torch

from dit_sparse import PlanCache, SparseAttentionConfig, TokenGrid

GRID = TokenGrid(4, 4, 4)
KEY = (1, "cond")


def qkv():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, GRID.num_tokens, 16, generator=gen) for _ in range(3)]


def decide(cache, step):
    return cache.prepare(KEY, layer=1, step=step, num_steps=10, grid=GRID, device="cpu")


def test_skipped_calls_neither_age_plans_nor_count():
    cache = PlanCache(SparseAttentionConfig(block_size=16, dense_steps=0, dense_layers=0, refresh_every=2))
    q, k, v = qkv()
    modes = []
    for step, skipped in enumerate([True, False, True, True, False, False, True, False]):
        call = decide(cache, step)
        modes.append(call.profile)
        if not skipped:
            call.run(q, k, v)
    # profile decided at 0 (skipped), again at 1 (ran); 2-3 skipped leave the plan one computed call old,
    # so 4 re-uses it and 5 re-profiles; 6 skipped, 7 re-uses
    assert modes == [True, True, False, False, False, True, False, False]
    cache.settle()
    assert cache.num_profiles == 2 and cache.sparse_calls == 4 and cache.skipped_calls == 4
    assert cache.profiled_at(KEY) == 5
    assert cache.outcomes[KEY] == {0: False, 1: True, 2: False, 3: False, 4: True, 5: True, 6: False, 7: True}


def test_counts_include_the_latest_call_once_it_ran():
    cache = PlanCache(SparseAttentionConfig(block_size=16, dense_steps=0, dense_layers=0, refresh_every=0))
    call = decide(cache, 0)
    assert cache.sparse_calls == 0 and cache.num_profiles == 0 and cache.mean_density() is None
    call.run(*qkv())
    assert cache.sparse_calls == 1 and cache.num_profiles == 1 and 0 < cache.mean_density() <= 1
