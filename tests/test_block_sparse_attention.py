import math

import pytest
import torch
import torch.nn.functional as F

from dit_sparse.kernels import (
    KernelConfig,
    TokenOrder,
    block_sparse_attention,
    block_sparse_attention_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_tables(B, H, nb, density, gen):
    """Random distinct key-block lists; query block 0 empty, block 1 full, junk past counts."""
    max_kv = nb
    idx = torch.stack([torch.randperm(nb, generator=gen) for _ in range(B * H * nb)]).view(B, H, nb, nb)
    cnt = torch.binomial(torch.full((B, H, nb), float(nb)), torch.full((B, H, nb), density), generator=gen)
    cnt = cnt.clamp(1, nb).int()
    cnt[:, :, 0] = 0
    if nb > 1:
        cnt[:, :, 1] = nb
    junk = torch.arange(max_kv) >= cnt[..., None]
    idx = idx.masked_fill(junk, 10**6)  # ignored entries; the kernel must never read them
    return idx.int(), cnt


def dense_masked_attention(q, k, v, idx, cnt, block_size, scale=None):
    """Exact attention with an explicit S x S mask (tiny shapes only)."""
    B, H, S, D = q.shape
    nb = math.ceil(S / block_size)
    blk = torch.zeros(B, H, nb, nb + 1, dtype=torch.bool)
    valid = torch.arange(idx.shape[-1]) < cnt[..., None]
    blk.scatter_(3, idx.long().where(valid, nb), True)
    m = blk[..., :nb].repeat_interleave(block_size, 2).repeat_interleave(block_size, 3)[:, :, :S, :S]
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m, scale=scale)
    return torch.where(m.any(-1, keepdim=True), out, 0.0)


@pytest.mark.parametrize("S", [200, 333, 1000])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("block_size", [16, 64, 128])
def test_triton_matches_reference(S, D, block_size):
    gen = torch.Generator().manual_seed(S * 7 + D + block_size)
    B, H = 2, 3
    q, k, v = (torch.randn(B, H, S, D, generator=gen) for _ in range(3))
    nb = math.ceil(S / block_size)
    idx, cnt = random_tables(B, H, nb, density=min(0.4, 8 / nb), gen=gen)
    out, lse = block_sparse_attention(q, k, v, idx, cnt, block_size=block_size, return_lse=True, backend="triton")
    ref, ref_lse = block_sparse_attention_reference(q, k, v, idx, cnt, block_size=block_size, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)
    # the empty query block: zeros and lse = -inf
    assert torch.all(out[:, :, :block_size] == 0)
    assert torch.all(lse[:, :, :block_size] == float("-inf"))
    if S <= 333:
        torch.testing.assert_close(ref, dense_masked_attention(q, k, v, idx, cnt, block_size), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "config",
    [KernelConfig(64, 32, 4, 2, tma=False), KernelConfig(64, 32, 4, 2, tma=True, tail_branch=True),
     KernelConfig(32, 64, 4, 2, tma=False, tail_branch=True), KernelConfig(64, 64, 4, 2, tma=True),
     KernelConfig(64, 32, 4, 2, tma=False, resident_programs=5),
     KernelConfig(64, 32, 4, 2, tma=True, tail_branch=True, resident_programs=7)],
)
def test_kernel_variants_match_reference(config):
    """Pointer and TMA tiles, tail-only masking, tiles smaller than the block, key lists started
    at each program's launch phase (rotated, wrapping around the list's end)."""
    gen = torch.Generator().manual_seed(11)
    B, H, S, D, bs = 2, 3, 333, 64, 64
    q, k, v = (torch.randn(B, H, S, D, generator=gen) for _ in range(3))
    idx, cnt = random_tables(B, H, math.ceil(S / bs), 0.5, gen)
    out, lse = block_sparse_attention(q, k, v, idx, cnt, block_size=bs, return_lse=True, backend="triton", config=config)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, idx, cnt, block_size=bs, return_lse=True)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)


def test_lse_is_log_sum_exp_of_scaled_scores():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 100, 64, generator=gen) for _ in range(3))
    nb = 7
    full_idx = torch.arange(nb, dtype=torch.int32).expand(1, 2, nb, nb)
    full_cnt = torch.full((1, 2, nb), nb, dtype=torch.int32)
    _, lse = block_sparse_attention(q, k, v, full_idx, full_cnt, block_size=16, scale=0.3, return_lse=True, backend="triton")
    expected = torch.logsumexp(0.3 * q @ k.transpose(-1, -2), -1)
    torch.testing.assert_close(lse, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("S,D", [(200, 64), (333, 128), (150, 80)])
def test_all_blocks_equal_sdpa(S, D):
    gen = torch.Generator().manual_seed(S)
    q, k, v = (torch.randn(2, 3, S, D, generator=gen) for _ in range(3))
    nb = math.ceil(S / 64)
    # every block listed, in shuffled order, one template for all heads
    idx = torch.randperm(nb, generator=gen).int().expand(1, 1, nb, nb)
    cnt = torch.full((1, 1, nb), nb, dtype=torch.int32)
    expected = F.scaled_dot_product_attention(q, k, v)
    for backend in ("triton", "torch"):
        out = block_sparse_attention(q, k, v, idx, cnt, block_size=64, backend=backend)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_expanded_and_size_one_index_views():
    gen = torch.Generator().manual_seed(3)
    B, H, S, D, bs = 2, 3, 333, 64, 64
    q, k, v = (torch.randn(B, H, S, D, generator=gen) for _ in range(3))
    nb = math.ceil(S / bs)
    t_idx, t_cnt = random_tables(1, 1, nb, 0.5, gen)
    # stride-0 views, size-1 dims, and a per-head template picked by expand on B only
    views = [
        (t_idx.expand(B, H, nb, nb), t_cnt.expand(B, H, nb)),
        (t_idx, t_cnt),
        (t_idx[0].expand(H, nb, nb)[None], t_cnt[0].expand(H, nb)[None]),
    ]
    ref = block_sparse_attention_reference(q, k, v, t_idx.expand(B, H, nb, nb).contiguous(), t_cnt.expand(B, H, nb).contiguous(), block_size=bs)
    for idx, cnt in views:
        out = block_sparse_attention(q, k, v, idx, cnt, block_size=bs, backend="triton")
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("tma", [True, False])
def test_head_templates_select_per_head_lists(tma):
    """head_pattern picks one of T shared templates per (b, h); same as per-head tables."""
    gen = torch.Generator().manual_seed(7)
    B, H, S, D, bs, T = 2, 3, 333, 64, 64, 4
    q, k, v = (torch.randn(B, H, S, D, generator=gen) for _ in range(3))
    nb = math.ceil(S / bs)
    t_idx, t_cnt = random_tables(1, T, nb, 0.4, gen)
    t_idx, t_cnt = t_idx[0], t_cnt[0]
    pattern = torch.randint(0, T, (B, H), generator=gen, dtype=torch.int32)
    expected = dense_masked_attention(q, k, v, t_idx[pattern.long()], t_cnt[pattern.long()], bs)
    config = KernelConfig(64, 64, 4, 2, tma=tma, tail_branch=tma)
    for backend in ("triton", "torch"):
        out = block_sparse_attention(q, k, v, t_idx, t_cnt, head_pattern=pattern, block_size=bs, backend=backend, config=config)
        torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=1e-4)
    # a pattern per head only (broadcast over batch) is accepted too
    out = block_sparse_attention(q, k, v, t_idx, t_cnt, head_pattern=pattern[0], block_size=bs, backend="torch")
    torch.testing.assert_close(out, dense_masked_attention(q, k, v, t_idx[pattern[0].long()].expand(B, H, nb, nb), t_cnt[pattern[0].long()].expand(B, H, nb), bs))
    with pytest.raises(ValueError, match="head_pattern must lie"):
        block_sparse_attention(q, k, v, t_idx, t_cnt, head_pattern=pattern + T, block_size=bs, backend="torch")
    with pytest.raises(ValueError, match="num_templates"):
        block_sparse_attention(q, k, v, t_idx[None], t_cnt, head_pattern=pattern, block_size=bs, backend="torch")


def test_strided_qkv_views():
    gen = torch.Generator().manual_seed(4)
    B, S, H, D = 2, 200, 3, 64
    qkv = torch.randn(B, S, 3, H, D, generator=gen)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, S, D) non-contiguous views
    nb = math.ceil(S / 64)
    idx, cnt = random_tables(B, H, nb, 0.5, gen)
    out = block_sparse_attention(q, k, v, idx, cnt, block_size=64, backend="triton")
    ref = block_sparse_attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), idx, cnt, block_size=64)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("tma", [True, False])
def test_output_keeps_the_diffusers_layout(tma):
    """q, k, v as (B, H, S, D) views of (B, S, H, D) buffers (what diffusers' processors hold):
    the output is laid out the same way, so transposing it back to (B, S, H, D) is free; with
    reordered heads too (their rows are stored through the index map)."""
    gen = torch.Generator().manual_seed(6)
    order = TokenOrder(frames=4, positions=30, text_len=9, text_position="prefix")
    B, H, S, D, bs = 2, 3, order.num_tokens, 64, 32
    q, k, v = (torch.randn(B, S, H, D, generator=gen).transpose(1, 2) for _ in range(3))
    idx, cnt = random_tables(B, H, math.ceil(S / bs), 0.4, gen)
    heads = torch.tensor([[True, False, True], [False, True, False]])
    cfg = KernelConfig(32, 32, 4, 2, tma=tma, tail_branch=tma)
    out = block_sparse_attention(q, k, v, idx, cnt, block_size=bs, backend="triton", order=order,
                                 reordered_heads=heads, config=cfg)
    assert out.shape == (B, H, S, D) and out.transpose(1, 2).is_contiguous()
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, block_size=bs, order=order, reordered_heads=heads)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    contiguous = block_sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), idx, cnt, block_size=bs,
                                        backend="triton", config=cfg)
    assert contiguous.is_contiguous()


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("text_position,text_len", [("none", 0), ("prefix", 13), ("suffix", 7)])
def test_position_major_heads(text_position, text_len, tma):
    """Reordered heads (TMA path: k, v reordered, q and output through the index map; pointer
    path: everything through the index map) equal reorder -> attend -> restore."""
    gen = torch.Generator().manual_seed(5)
    order = TokenOrder(frames=5, positions=40, text_len=text_len, text_position=text_position)
    B, H, S, D, bs = 2, 3, order.num_tokens, 64, 32
    q, k, v = (torch.randn(B, H, S, D, generator=gen) for _ in range(3))
    nb = math.ceil(S / bs)
    idx, cnt = random_tables(B, H, nb, 0.4, gen)
    heads = torch.tensor([[True, False, True], [False, True, False]])
    cfg = KernelConfig(32, 32, 4, 2, tma=tma, tail_branch=tma)
    out, lse = block_sparse_attention(
        q, k, v, idx, cnt, block_size=bs, return_lse=True, backend="triton", order=order, reordered_heads=heads, config=cfg
    )
    ref, ref_lse = block_sparse_attention_reference(q, k, v, idx, cnt, block_size=bs, return_lse=True, order=order, reordered_heads=heads)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)
    # a head not reordered is plain block-sparse attention
    plain = block_sparse_attention_reference(q, k, v, idx, cnt, block_size=bs)
    torch.testing.assert_close(out[0, 1], plain[0, 1], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(out[0, 0], plain[0, 0], atol=1e-3)


def test_reference_handles_low_precision():
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 300, 64, generator=gen) for _ in range(3))
    nb = 3
    idx, cnt = random_tables(1, 2, nb, 0.7, gen)
    ref32 = block_sparse_attention_reference(q, k, v, idx, cnt, block_size=128)
    for dtype in (torch.float16, torch.bfloat16):
        out = block_sparse_attention_reference(q.to(dtype), k.to(dtype), v.to(dtype), idx, cnt, block_size=128)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref32, atol=3e-2, rtol=3e-2)


def test_auto_backend_on_cpu_is_reference(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 1, 100, 64, generator=gen) for _ in range(3))
    idx = torch.tensor([[[[0, 5], [2, 0]]]], dtype=torch.int32)
    cnt = torch.tensor([[[1, 2]]], dtype=torch.int32)
    # an index past the block count is an error on the reference path
    with pytest.raises(ValueError, match="kv_indices must lie"):
        block_sparse_attention(q, k, v, idx, cnt, block_size=64, backend="auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        block_sparse_attention(q, k, v, idx, cnt, block_size=64, backend="triton")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(kv_indices=torch.zeros(1, 1, 2, 2, dtype=torch.int64)), "int32"),
        (dict(kv_indices=torch.zeros(1, 1, 3, 2, dtype=torch.int32)), "do not fit"),
        (dict(block_size=48), "power of two"),
        (dict(k=torch.randn(1, 1, 99, 64)), "same shape"),
        (dict(q=torch.randn(1, 1, 100, 300), k=torch.randn(1, 1, 100, 300), v=torch.randn(1, 1, 100, 300)), "head dim"),
        (dict(backend="cuda"), "backend"),
        (dict(q=torch.randn(1, 1, 64, 100).transpose(-1, -2)), "contiguous"),
    ],
)
def test_bad_input_gives_clear_error(change, match):
    args = dict(
        q=torch.randn(1, 1, 100, 64), k=torch.randn(1, 1, 100, 64), v=torch.randn(1, 1, 100, 64),
        kv_indices=torch.zeros(1, 1, 2, 2, dtype=torch.int32), kv_counts=torch.ones(1, 1, 2, dtype=torch.int32),
        block_size=64, backend="torch",
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(**args)
