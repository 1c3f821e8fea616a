"""`quantized_warmup`: the dense warm-up steps of sparse-eligible layers run the quantized kernel in
dense mode (every key block), counted as dense; dense layers and a bf16 fallback keep the model's
own attention (issue 22, item 2)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import dit_sparse
from dit_sparse import PlanCache, SparseAttentionConfig, TokenGrid
from dit_sparse.plan_cache import DenseCall, LayerCall

import step_cache_checks as sc

GRID = TokenGrid(3, 8, 8)


def qkv():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, GRID.num_tokens, 32, generator=gen) for _ in range(3)]


def config(**fields):
    return SparseAttentionConfig(**{**dict(block_size=32, dense_steps=2, dense_layers=1, precision="int8",
                                           backend="torch", quantized_warmup=True), **fields})


def test_it_needs_an_8_bit_precision():
    with pytest.raises(ValueError, match="quantized_warmup.*int8"):
        SparseAttentionConfig(quantized_warmup=True)


def test_warm_up_calls_of_sparse_layers_run_the_quantized_kernel_over_every_block():
    cache = PlanCache(config())
    decide = lambda layer, step: cache.prepare((layer, 0), layer=layer, step=step, num_steps=10, grid=GRID,  # noqa: E731
                                               device="cpu")
    call = decide(1, 0)
    assert isinstance(call, DenseCall) and call.dense and call.kv_counts.min() == call.kv_counts.max()
    assert decide(0, 0) is None  # a dense layer: the model's own attention
    assert isinstance(decide(1, 2), LayerCall) and not decide(1, 3).dense
    q, k, v = qkv()
    out, exact = call.run(q, k, v), F.scaled_dot_product_attention(q, k, v)
    error = ((out - exact).norm() / exact.norm()).item()
    assert 0 < error < 0.03  # quantized, close to exact
    assert cache.dense_calls == 2 and cache.sparse_calls == 0  # still dense calls in the counts


def test_where_the_quantized_kernel_cannot_run_the_warm_up_keeps_the_models_attention():
    cache = PlanCache(config(backend="auto"))  # on the CPU "int8" falls back to bf16, with a warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert cache.prepare((1, 0), layer=1, step=0, num_steps=10, grid=GRID, device="cpu") is None


def test_compiled_dense_call_matches_eager():
    call = PlanCache(config()).prepare((1, 0), layer=1, step=0, num_steps=10, grid=GRID, device="cpu")
    q, k, v = qkv()
    compiled = torch.compile(lambda q, k, v: call.run(q, k, v), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), call.run(q, k, v))


def test_pipeline_warm_up_is_quantized_and_counted_dense():
    pipe = sc.wan.build()
    stock = sc.generate(pipe, "wan")
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=1.0, dense_layers=0, precision="int8",
                                                          backend="torch", quantized_warmup=True, block_size=32))
    quantized = sc.generate(pipe, "wan")
    stats = handle.stats()
    assert stats.sparse_calls == 0 and stats.num_profiles == 0
    assert not torch.equal(quantized, stock)
    assert ((quantized - stock).norm() / stock.norm()).item() < 0.05
    handle.set_config(SparseAttentionConfig(dense_steps=1.0, dense_layers=0, precision="int8", backend="torch",
                                            block_size=32))
    torch.testing.assert_close(sc.generate(pipe, "wan"), stock)  # without it: the model's own attention
    handle.remove()
