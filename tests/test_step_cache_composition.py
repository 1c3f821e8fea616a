"""dit_sparse under each diffusers step cache (FirstBlockCache, MagCache, TaylorSeer, FasterCache,
PAB) applied by hand before or after `dit_sparse.apply`, on the tiny Wan and Flux pipelines:
with every step dense the output is the cache's alone, and under skips the plans follow the
calls that ran (real step indices, ages in computed calls, profiles only where a call ran)."""

import math
from collections import defaultdict
from unittest import mock

import pytest
import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.plan_cache import LayerCall

import family_checks as checks
import step_cache_checks as sc

ORDERS = ("cache first", "sparse first")


def build(family, kind, order, config):
    """The tiny pipeline with `kind`'s cache and dit_sparse (`config`), added in `order`; the handle."""
    pipe = sc.FAMILIES[family].build()
    if order == "cache first":
        pipe.transformer.enable_cache(sc.cache_config(kind, family, pipe))
    handle = dit_sparse.apply(pipe, config)
    if order == "sparse first":
        pipe.transformer.enable_cache(sc.cache_config(kind, family, pipe))
    return pipe, handle


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kind", sc.KINDS)
@pytest.mark.parametrize("family", sc.FAMILIES)
def test_every_step_dense_gives_the_cache_alone(family, kind, order):
    stock = sc.generate(sc.FAMILIES[family].build(), family, kind)
    pipe = sc.FAMILIES[family].build()
    pipe.transformer.enable_cache(sc.cache_config(kind, family, pipe))
    alone = sc.generate(pipe, family, kind)
    assert not torch.equal(alone, stock)  # the cache skipped work
    pipe, handle = build(family, kind, order, SparseAttentionConfig(dense_steps=1.0, **checks.TINY))
    assert torch.equal(sc.generate(pipe, family, kind), alone)
    assert handle.stats().sparse_calls == 0


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kind", sc.KINDS)
@pytest.mark.parametrize("family", sc.FAMILIES)
def test_plans_age_and_refresh_only_on_computed_calls(family, kind, order):
    """refresh_every=2, every step after the first sparse, layer 0 dense: each (layer, branch)
    profiles at the first, third, fifth... of its calls that ran, whichever steps the cache
    skipped; calls carry the scheduler's step; the statistics count what ran and what was skipped."""
    config = SparseAttentionConfig(dense_steps=1, dense_layers=1, refresh_every=2, **checks.TINY)
    pipe, handle = build(family, kind, order, config)
    ran, run = [], LayerCall.run

    def spy(call, *args, **kwargs):
        index = pipe.scheduler.step_index
        ran.append((call, 0 if index is None else index))
        return run(call, *args, **kwargs)

    with mock.patch.object(LayerCall, "run", spy), sc.computed_calls(pipe, family) as computed:
        sc.generate(pipe, family, kind)
    stats, runtime = handle.stats(), handle.runtimes["transformer"]
    key_of = {id(plan): key for key, plan in runtime.cache.plans.items()}
    by_key = defaultdict(list)
    for call, step in ran:
        assert call.step == step  # the real step, whatever the cache skipped
        by_key[key_of[id(call.plan)]].append(call)
    for (layer, branch), calls in by_key.items():
        assert [c.profile for c in calls] == [i % 2 == 0 for i in range(len(calls))], (layer, branch)
        last_profile = [c.step for c in calls if c.profile][-1]
        assert stats.layers[f"transformer.{layer}"][str(branch)].profiled_at_step == last_profile
    assert stats.num_profiles == sum(math.ceil(len(calls) / 2) for calls in by_key.values())
    # after the dense step 0, what ran is what the attention modules computed, step by step
    sparse_layers = [layer for layer in runtime.layers if layer >= config.dense_layers]
    per_step = defaultdict(int)
    for step, layer in computed:
        per_step[step] += step > 0 and layer in sparse_layers
    assert {s: n for s, n in per_step.items() if n} == {s: sum(1 for _, t in ran if t == s) for _, s in ran}
    branches = 1 if kind in sc.WITHOUT_CFG else 2
    decided = len(sparse_layers) * branches * (sc.STEPS - 1)
    assert stats.sparse_calls == len(ran) and stats.sparse_calls + stats.skipped_calls == decided
    full = len(sparse_layers) * branches
    assert stats.computed_steps["transformer"] == [s for s in range(1, sc.STEPS) if per_step[s] == full]
    assert stats.skipped_steps["transformer"] == [s for s in range(1, sc.STEPS) if per_step[s] < full]
    assert stats.skipped_steps["transformer"] and stats.computed_steps["transformer"]  # the cache did skip
