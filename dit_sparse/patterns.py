"""Block masks of the two head kinds, and the key-block tables the kernel reads.

spatial:  a query sees keys within +-width frames of its own (frame-major, native order).
temporal: a query sees keys within +-width spatial positions of its own, across all frames
          (position-major order: the band is a diagonal once tokens are reordered).
For images (one frame) the roles are played by rows (row-major) and columns (column-major).
Text tokens are global: every query block sees the blocks holding text, and query blocks
holding text see everything. Masks are (num_blocks, num_blocks): block level, never S x S.
"""

from __future__ import annotations

import math

import torch

from .geometry import TokenGrid

KINDS = ("spatial", "temporal")


def _block_ranges(grid: TokenGrid, kind: str, block_size: int):
    """Per block: min and max banded coordinate of its video tokens, and whether it holds text."""
    order = grid.order
    S, nb = order.num_tokens, math.ceil(order.num_tokens / block_size)
    tokens = torch.arange(nb * block_size)
    j = tokens - order.video_start
    video = (j >= 0) & (j < order.frames * order.positions)
    coord = j // (order.positions if kind == "spatial" else order.frames)
    inf = torch.iinfo(torch.int64).max
    lo = coord.masked_fill(~video, inf).view(nb, block_size).amin(1)
    hi = coord.masked_fill(~video, -inf).view(nb, block_size).amax(1)
    text = (~video & (tokens < S)).view(nb, block_size).any(1)
    return lo, hi, text


def band_block_mask(grid: TokenGrid, kind: str, width: int, block_size: int, first_frame_sink: bool = False) -> torch.Tensor:
    """(nb, nb) bool: query block i attends key block j, in the layout of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    lo, hi, text = _block_ranges(grid, kind, block_size)
    has_video = lo <= hi
    gap = torch.maximum(lo[None, :] - hi[:, None], lo[:, None] - hi[None, :])
    mask = has_video[:, None] & has_video[None, :] & (gap <= width)
    mask |= text[None, :] | text[:, None]
    if first_frame_sink and kind == "spatial":
        mask |= (has_video & (lo == 0))[None, :]
    return mask


def max_width(grid: TokenGrid, kind: str) -> int:
    """The width at which a band covers every key."""
    order = grid.order
    return (order.frames if kind == "spatial" else order.positions) - 1


def width_for_density(grid: TokenGrid, kind: str, density: float, block_size: int, first_frame_sink: bool = False) -> int:
    """The narrowest band of `kind` whose block density reaches `density` (Sparse VideoGen's
    way of sizing its bands from a target sparsity); binary search, density grows with width."""
    lo, hi = 0, max_width(grid, kind)
    while lo < hi:
        mid = (lo + hi) // 2
        if band_block_mask(grid, kind, mid, block_size, first_frame_sink).float().mean() >= density:
            hi = mid
        else:
            lo = mid + 1
    return lo


def block_tables(mask: torch.Tensor):
    """(..., nb, nb) bool block mask -> kv_indices (..., nb, max_count) and kv_counts (..., nb),
    int32: each row lists its attended key blocks in increasing order (entries past the count
    are padding the kernel never reads)."""
    counts = mask.sum(-1).to(torch.int32)
    indices = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return indices[..., : max(1, int(counts.max()))], counts
