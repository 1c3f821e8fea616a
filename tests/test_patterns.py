import math

import pytest
import torch

from dit_sparse import TokenGrid
from dit_sparse.kernels import block_sparse_attention_reference, reorder_tokens_reference
from dit_sparse.patterns import band_block_mask, block_tables, max_width, widths_for_densities


def token_mask(grid, kind, width):
    """Token-level truth of the pattern, in the kind's layout (tiny grids only)."""
    order = grid.order
    S = order.num_tokens
    j = torch.arange(S) - order.video_start
    video = (j >= 0) & (j < order.frames * order.positions)
    coord = j // (order.positions if kind == "spatial" else order.frames)
    near = (coord[:, None] - coord[None, :]).abs() <= width
    return (video[:, None] & video[None, :] & near) | ~video[None, :] | ~video[:, None]


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
@pytest.mark.parametrize("text", [(0, "none"), (5, "prefix"), (9, "suffix")])
def test_block_mask_covers_exactly_the_blocks_the_band_touches(kind, text):
    grid = TokenGrid(frames=4, height=3, width=5, text_len=text[0], text_position=text[1])
    bs = 8
    for width in (0, 1, 2):
        mask = band_block_mask(grid, kind, width, bs)
        tok = token_mask(grid, kind, width)
        nb = mask.shape[0]
        pad = nb * bs - tok.shape[0]
        tok = torch.nn.functional.pad(tok, (0, pad, 0, pad))
        touched = tok.view(nb, bs, nb, bs).any(3).any(1)
        assert torch.equal(mask, touched), (kind, text, width)


def test_text_blocks_are_global_and_sink_adds_first_frame():
    grid = TokenGrid(frames=6, height=4, width=4, text_len=16, text_position="prefix")
    mask = band_block_mask(grid, "spatial", 0, 16)
    assert mask[0].all() and mask[:, 0].all()  # the text block
    assert not mask[6, 1]  # frame 5 does not see frame 0 ...
    assert band_block_mask(grid, "spatial", 0, 16, first_frame_sink=True)[6, 1]  # ... unless it is a sink


def test_widths_for_densities_are_the_narrowest_bands_reaching_them():
    grid = TokenGrid(frames=9, height=6, width=8)
    for kind in ("spatial", "temporal"):
        densities = [band_block_mask(grid, kind, w, 16).float().mean().item() for w in range(max_width(grid, kind) + 1)]
        assert densities == sorted(densities) and densities[-1] == 1.0
        targets = (0.1, 0.25, 0.5)
        for target, w in zip(targets, widths_for_densities(grid, kind, targets, 16)):
            assert densities[w] >= target and (w == 0 or densities[w - 1] < target)


def test_tables_drive_the_kernel_to_the_pattern():
    """Temporal band tables + reordering equal exact attention under the token-level mask."""
    grid = TokenGrid(frames=5, height=4, width=6, text_len=7, text_position="suffix")
    bs, S = 16, grid.num_tokens
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, S, 32, generator=gen) for _ in range(3))
    mask = band_block_mask(grid, "temporal", 1, bs)
    idx, cnt = block_tables(mask)
    assert idx.shape[-1] == int(cnt.max()) and int(cnt.sum()) < mask.numel()
    out = block_sparse_attention_reference(q, k, v, idx[None, None], cnt[None, None], block_size=bs, order=grid.order)
    # the same thing done by hand: reorder, block mask expanded to tokens, dense attention, restore
    rq, rk, rv = (reorder_tokens_reference(t, grid.order) for t in (q, k, v))
    tok = mask.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:S, :S]
    ref = torch.nn.functional.scaled_dot_product_attention(rq, rk, rv, attn_mask=tok)
    torch.testing.assert_close(out, reorder_tokens_reference(ref, grid.order, inverse=True), atol=1e-5, rtol=1e-5)


def test_bad_kind_and_width():
    grid = TokenGrid(2, 2, 2)
    with pytest.raises(ValueError, match="kind"):
        band_block_mask(grid, "diagonal", 1, 16)
    with pytest.raises(ValueError, match="width"):
        band_block_mask(grid, "spatial", -1, 16)
