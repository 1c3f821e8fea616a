"""Checks every model family must pass, shared by the per-family test modules.

A family test module supplies `build()` -> a stock diffusers pipeline made tiny, offline, from
config dicts with random weights, and `call_kwargs()` -> the arguments of one generation with
precomputed prompt embeddings and output_type="latent" (fixed generator inside).
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.plan_cache import LayerCall

TINY = dict(block_size=16, num_sampled_queries=16)


@contextmanager
def recording_sparse_calls():
    """Inside: a list that receives (plan grid, q shape as (B, H, S, D)) of every sparse call."""
    seen, run = [], LayerCall.run

    def spy(call, q, k, v, *args, **kwargs):
        seen.append((call.plan.grid, tuple(q.shape)))
        return run(call, q, k, v, *args, **kwargs)

    with mock.patch.object(LayerCall, "run", spy):
        yield seen


def generate(pipe, call_kwargs):
    out = pipe(**call_kwargs())
    frames = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(frames) if not isinstance(frames, torch.Tensor) else frames


def processors(pipe):
    return {name: module.processor for t in ("transformer", "transformer_2") if getattr(pipe, t, None) is not None
            for name, module in getattr(pipe, t).named_modules() if hasattr(module, "processor")}


def check_all_dense_steps_are_identical(build, call_kwargs, bit_exact=True):
    """Every step dense: the stock output, bit for bit where the family runs the stock call in
    dense steps, else (HunyuanVideo drops padded text keys instead of masking them) to rounding."""
    pipe = build()
    stock = generate(pipe, call_kwargs)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=1.0, **TINY))
    out = generate(pipe, call_kwargs)
    if bit_exact:
        assert torch.equal(out, stock)
    else:
        torch.testing.assert_close(out, stock, atol=2e-4, rtol=1e-3)
    assert handle.stats().sparse_calls == 0 and handle.stats().dense_calls > 0


def check_sparse_path_with_full_bands_matches_stock(build, call_kwargs, atol=2e-4):
    """Fixed density 1.0: every head profiled, its band covers every key, and the block-sparse
    kernel (through its reference on the CPU) computes the attention."""
    pipe = build()
    stock = generate(pipe, call_kwargs)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **TINY))
    out = generate(pipe, call_kwargs)
    stats = handle.stats()
    assert stats.dense_calls == 0 and stats.sparse_calls > 0 and stats.num_profiles > 0
    torch.testing.assert_close(out, stock, atol=atol, rtol=1e-3)


def check_default_config_runs_sparse(build, call_kwargs):
    pipe = build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0.25, **TINY))
    out = generate(pipe, call_kwargs)
    assert torch.isfinite(out).all()
    stats = handle.stats()
    assert stats.sparse_calls > 0 and stats.num_profiles > 0 and 0 < stats.mean_density <= 1
    for layer in stats.layers.values():
        for branch in layer.values():
            assert all(kind in ("spatial", "temporal", "dense") for row in branch.kinds for kind in row)


def check_remove_restores_processors(build, call_kwargs):
    pipe = build()
    before = processors(pipe)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(**TINY))
    assert dit_sparse.apply(pipe) is handle  # no double wrapping
    assert processors(pipe) != before
    dit_sparse.remove(pipe)
    after = processors(pipe)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def check_step_and_branch_bookkeeping(build, call_kwargs, branches):
    """4 steps with dense_steps=0.5: steps 0-1 dense, 2-3 sparse, in every CFG branch."""
    pipe = build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0.5, dense_layers=0, **TINY))
    generate(pipe, lambda: {**call_kwargs(), "num_inference_steps": 4})
    steps = handle.stats().steps["transformer"]
    assert sorted(steps) == sorted(branches)
    for branch in branches:
        assert steps[branch] == {"dense": [0, 1], "sparse": [2, 3]}
