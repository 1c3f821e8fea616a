"""PatternBank: every candidate pattern of one token grid, ready for profiling and the kernel.

A candidate is a kind ("spatial", "temporal") and a band width, or "dense". The bank holds,
once per grid, what all layers and heads share:
- the key-block templates of every candidate stacked for the kernel (a head picks one by index),
- the query rows that profiling samples, and the rows of each candidate's block mask at those
  rows' query blocks, so the recall of all candidates is one matrix product with the sampled
  block masses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .geometry import TokenGrid
from .patterns import KINDS, band_block_mask, block_tables, widths_for_densities

DENSITY_LADDER = (0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Target densities the adaptive width ladder is built from (one band width per step)."""
MAX_SPARSE_DENSITY = 0.9
"""A band this dense costs about what full attention does, so it is not a candidate."""


@dataclass(frozen=True)
class Candidate:
    kind: str  # "spatial", "temporal" or "dense"
    width: int  # band half-width in frames / positions (rows / columns for images); -1 for dense
    density: float  # fraction of (query block, key block) pairs computed


def sample_query_rows(grid: TokenGrid, num: int) -> torch.Tensor:
    """`num` video token rows spread over the whole grid: one per equal stretch of the video
    tokens, at a fixed pseudo-random offset inside it (a plain stride can alias with the grid).
    Text rows are never sampled: they always attend everything."""
    video = grid.num_video_tokens
    num = min(num, video)
    offsets = torch.rand(num, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = ((torch.arange(num, dtype=torch.float64) + offsets) * video / num).long().clamp_(max=video - 1)
    return rows + grid.order.video_start


class PatternBank:
    """Candidates of one grid. `density=None`: the adaptive ladder of both kinds plus dense;
    a float: one band per kind sized to that density (fixed-density mode), no dense."""

    def __init__(self, grid: TokenGrid, *, block_size: int, num_sampled_queries: int,
                 density: float | None = None, first_frame_sink: bool = False, device=None):
        self.grid = grid
        self.block_size = block_size
        targets = DENSITY_LADDER if density is None else (density,)
        masks, self.candidates = [], []
        for kind in KINDS:
            for width in sorted(set(widths_for_densities(grid, kind, targets, block_size, first_frame_sink))):
                mask = band_block_mask(grid, kind, width, block_size, first_frame_sink)
                d = mask.float().mean().item()
                if density is None and d >= MAX_SPARSE_DENSITY:
                    continue
                masks.append(mask)
                self.candidates.append(Candidate(kind, width, d))
        if density is None:
            nb = math.ceil(grid.num_tokens / block_size)
            masks.append(torch.ones(nb, nb, dtype=torch.bool))
            self.candidates.append(Candidate("dense", -1, 1.0))
        stacked = torch.stack(masks)
        kv_indices, kv_counts = block_tables(stacked)
        self.kv_indices = kv_indices.to(device)
        self.kv_counts = kv_counts.to(device)
        self.device = self.kv_indices.device  # resolved: "cuda" -> cuda:0
        self.densities = torch.tensor([c.density for c in self.candidates], device=self.device)
        self.temporal = torch.tensor([c.kind == "temporal" for c in self.candidates], device=self.device)
        self.dense_index = len(self.candidates) - 1 if density is None else None

        self.is_dense = torch.tensor([c.kind == "dense" for c in self.candidates], device=self.device)

        # Recall of candidate c on the sampled rows = (block masses of the rows, in the native
        # and the position-major layout, flattened) @ recall_matrix[:, c] / num_rows: column c
        # holds c's block-mask rows at the rows' query blocks, in its kind's layout.
        rows = sample_query_rows(grid, num_sampled_queries)
        position_major_row = grid.order.frame_major_index()[rows]
        layout_of = {"spatial": 0, "dense": 0, "temporal": 1}
        query_blocks = (rows // block_size, position_major_row // block_size)
        matrix = torch.zeros(len(self.candidates), 2, rows.numel(), stacked.shape[-1])
        for c, candidate in enumerate(self.candidates):
            layout = layout_of[candidate.kind]
            matrix[c, layout] = stacked[c][query_blocks[layout]].float()
        self.recall_matrix = matrix.flatten(1).t().contiguous().to(self.device)
        self.sample_rows = rows.to(self.device)

    def kinds(self, patterns: torch.Tensor) -> list[list[str]]:
        """The kind of each entry of (B, H) candidate indices (reads them from the device)."""
        return [[self.candidates[c].kind for c in row] for row in patterns.cpu().tolist()]

    def density_of(self, patterns: torch.Tensor) -> torch.Tensor:
        """(B, H) float tensor (CPU): the fraction of blocks of each entry's candidate."""
        return torch.tensor([[self.candidates[c].density for c in row] for row in patterns.cpu().tolist()])
