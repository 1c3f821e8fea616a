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


def _band_parts(grid: TokenGrid, kind: str, block_size: int, first_frame_sink: bool):
    """The band of `kind` as `always | (gap <= width)`: `gap` (nb, nb) is the distance in the
    banded coordinate between two blocks' video tokens (huge where one holds no video), and
    `always` marks the pairs every width keeps (text, and the first-frame sink)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    lo, hi, text = _block_ranges(grid, kind, block_size)
    has_video = lo <= hi
    gap = torch.maximum(lo[None, :] - hi[:, None], lo[:, None] - hi[None, :])
    gap = gap.masked_fill(~(has_video[:, None] & has_video[None, :]), torch.iinfo(torch.int64).max)
    always = text[None, :] | text[:, None]
    if first_frame_sink and kind == "spatial":
        always = always | (has_video & (lo == 0))[None, :]
    return gap, always


def band_block_mask(grid: TokenGrid, kind: str, width: int, block_size: int, first_frame_sink: bool = False) -> torch.Tensor:
    """(nb, nb) bool: query block i attends key block j, in the layout of `kind`."""
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    gap, always = _band_parts(grid, kind, block_size, first_frame_sink)
    return always | (gap <= width)


def max_width(grid: TokenGrid, kind: str) -> int:
    """The width at which a band covers every key."""
    order = grid.order
    return (order.frames if kind == "spatial" else order.positions) - 1


def widths_for_densities(grid: TokenGrid, kind: str, densities, block_size: int, first_frame_sink: bool = False) -> list[int]:
    """For each target density, the narrowest band of `kind` whose block density reaches it
    (Sparse VideoGen's way of sizing its bands from a target sparsity); the widest band where
    none does. Density grows with width, so this is a search in the sorted block gaps."""
    gap, always = _band_parts(grid, kind, block_size, first_frame_sink)
    gaps = gap[~always].sort().values
    total = gap.numel()
    widths = []
    for density in densities:
        needed = math.ceil(density * total - 1e-9) - int(always.sum())
        if needed <= 0:
            widths.append(0)
        elif needed > gaps.numel() or gaps[needed - 1] > max_width(grid, kind):
            widths.append(max_width(grid, kind))
        else:
            widths.append(max(0, int(gaps[needed - 1])))
    return widths


def block_tables(mask: torch.Tensor):
    """(..., nb, nb) bool block mask -> kv_indices (..., nb, max_count) and kv_counts (..., nb),
    int32: each row lists its attended key blocks in increasing order (entries past the count
    are padding the kernel never reads)."""
    counts = mask.sum(-1).to(torch.int32)
    indices = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return indices[..., : max(1, int(counts.max()))], counts
