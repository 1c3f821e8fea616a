"""SparseProcessor.attend: the one sparse-or-dense decision of every family processor, with
padded text dropped instead of masked."""

import pytest
import torch
import torch.nn.functional as F

from dit_sparse import SparseAttentionConfig
from dit_sparse.families.base import SparseProcessor
from dit_sparse.geometry import TokenGrid
from dit_sparse.runtime import SparseRuntime

import family_checks as checks

TEXT, VALID, GRID = 7, 4, TokenGrid(2, 4, 6)  # 48 video tokens after a 7-token text prefix, 3 of it padding


def processor(**config):
    runtime = SparseRuntime(SparseAttentionConfig(dense_layers=0, **checks.TINY, **config))
    processor = SparseProcessor(runtime, layer=0)
    runtime.begin_call(TokenGrid(GRID.frames, GRID.height, GRID.width, VALID, "prefix"), timestep=1.0)
    return processor


def qkv():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, TEXT + GRID.num_tokens, 2, 16, generator=gen) for _ in range(3)]


def masked_stock(query, key, value, mask):
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (query, key, value)), attn_mask=mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("config", [dict(dense_steps=1), dict(dense_steps=0, density=1.0)], ids=["dense", "sparse"])
def test_padded_text_in_the_middle_is_dropped_and_its_queries_still_attend(config):
    """Qwen-Image's layout: [valid text, padded text, image]. Dense or sparse (full bands), the
    output equals the stock call that masks the padded keys, padded query rows included."""
    query, key, value = qkv()
    keep = torch.ones(TEXT + GRID.num_tokens, dtype=torch.bool)
    keep[VALID:TEXT] = False
    mask = keep[None, None, None, :].expand(2, 1, 1, -1)
    proc = processor(**config)
    out = proc.attend(query, key, value, mask=mask, padding=(VALID, TEXT))
    torch.testing.assert_close(out, masked_stock(query, key, value, mask), atol=1e-5, rtol=1e-4)
    calls = proc.runtime.cache
    assert (calls.dense_calls, calls.sparse_calls) == ((1, 0) if "density" not in config else (0, 1))


def test_disabled_runtime_runs_the_stock_masked_call():
    query, key, value = qkv()
    mask = torch.ones(2, 1, 1, TEXT + GRID.num_tokens, dtype=torch.bool)
    mask[..., VALID:TEXT] = False
    proc = processor(dense_steps=0, density=1.0)
    proc.runtime.enabled = False
    proc.runtime.reset()
    proc.runtime.begin_call(proc.runtime.grid, timestep=1.0)
    out = proc.attend(query, key, value, mask=mask, padding=(VALID, TEXT))
    assert torch.equal(out, proc.dense(query, key, value, mask))
    assert proc.runtime.cache.dense_calls == proc.runtime.cache.sparse_calls == 0
