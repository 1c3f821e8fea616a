"""Online head profiling: pick each head's cheapest pattern that keeps its attention right.

`profile_heads` samples a few query rows spread over the video, computes how much of their
exact attention mass each key block receives (in native and in position-major order, one
kernel launch), and for every (batch item, head) picks the cheapest candidate of the grid's
`PatternBank` whose recall (mass kept, averaged over the sampled rows) reaches
`config.recall`; heads no band satisfies stay dense. In fixed-density mode every head gets the
kind with the higher recall at the configured density. Neither profiling nor a call under a
cached plan waits for the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dit_sparse.kernels import block_sparse_attention, sampled_block_lse

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .pattern_bank import PatternBank


class HeadPlan:
    """The pattern of every (batch item, head) of one attention call, and how to run it.

    patterns: (B, H) int32 index into the bank's candidates, on the device. Neither making a
    plan nor attending under it reads the device: temporal heads are flagged by a device mask
    the kernel reads, so profiling adds no host synchronisation to a step. `kinds`, `density`
    and `mean_density` (for statistics) read the patterns back on first use.
    """

    def __init__(self, bank: PatternBank, patterns: torch.Tensor, shape, backend: str):
        self.bank = bank
        self.grid = bank.grid
        self.shape = tuple(shape)  # (B, H, S)
        self.backend = backend
        self.patterns = patterns.to(torch.int32)
        self.reordered = bank.temporal[self.patterns.long()]  # (B, H) bool: heads attended position-major
        self.step = None  # set by PlanCache: the denoising step it was profiled at
        self.calls = 0  # sparse calls served, counted by PlanCache
        self._chosen: list[list[int]] | None = None

    def _host_patterns(self) -> list[list[int]]:
        if self._chosen is None:
            self._chosen = self.patterns.cpu().tolist()
        return self._chosen

    @property
    def kinds(self) -> list[list[str]]:
        """Per batch item, per head: "spatial", "temporal" or "dense"."""
        return [[self.bank.candidates[c].kind for c in row] for row in self._host_patterns()]

    @property
    def density(self) -> torch.Tensor:
        """(B, H) float tensor (CPU) of the fraction of blocks each head computes."""
        return torch.tensor([[self.bank.candidates[c].density for c in row] for row in self._host_patterns()])

    @property
    def mean_density(self) -> float:
        return float(self.density.mean())

    def fits(self, q: torch.Tensor, grid: TokenGrid) -> bool:
        """Whether this plan may serve an attention call with these queries and grid."""
        return tuple(q.shape[:3]) == self.shape and grid == self.grid and q.device == self.bank.device

    def attend(self, q, k, v, scale=None) -> torch.Tensor:
        """Attention of (B, H, S, D) q, k, v under this plan; output in native order. No host
        synchronisation: everything it reads is already on the device."""
        if tuple(q.shape[:3]) != self.shape:
            raise ValueError(f"this plan was made for (B, H, S) = {self.shape}, got q of shape {tuple(q.shape)}")
        order, reordered = self.grid.order, self.reordered
        if not self.patterns.is_cuda:  # off the GPU reading the plan is free: skip what no head needs
            kinds = {kind for row in self.kinds for kind in row}
            if kinds == {"dense"}:
                return F.scaled_dot_product_attention(q, k, v, scale=scale)
            if "temporal" not in kinds:
                order = reordered = None
        bank = self.bank
        return block_sparse_attention(
            q, k, v, bank.kv_indices, bank.kv_counts, head_pattern=self.patterns,
            block_size=bank.block_size, scale=scale, backend=self.backend,
            order=order, reordered_heads=reordered,
        )


def make_bank(grid: TokenGrid, config: SparseAttentionConfig, device) -> PatternBank:
    return PatternBank(
        grid, block_size=config.block_size, num_sampled_queries=config.num_sampled_queries,
        density=config.density, first_frame_sink=config.first_frame_sink, device=device,
    )


def _check_qkv(q, k, v, grid: TokenGrid):
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must be (B, H, S, D) of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[2] != grid.num_tokens:
        raise ValueError(
            f"q, k, v hold S={q.shape[2]} tokens but the grid has {grid.frames} x {grid.height} x "
            f"{grid.width} video + {grid.text_len} text = {grid.num_tokens}"
        )


def sampled_recall(q, k, bank: PatternBank, scale=None, backend="auto") -> torch.Tensor:
    """(B, H, C): the attention mass each candidate of `bank` keeps, averaged over the sampled rows."""
    B, H = q.shape[:2]
    rows = q.index_select(2, bank.sample_rows)
    lse = sampled_block_lse(rows, k, block_size=bank.block_size, scale=scale, order=bank.grid.order, backend=backend)
    mass = lse.softmax(-1).view(B * H, -1)
    return (mass @ bank.recall_matrix).view(B, H, -1) / rows.shape[2]


def profile_heads(q, k, v, grid: TokenGrid, config: SparseAttentionConfig | None = None, *,
                  scale=None, bank: PatternBank | None = None) -> HeadPlan:
    """Choose a pattern per (batch item, head) of (B, H, S, D) q, k, v in native token order.

    `bank` (the grid's candidates) is built when not given; pass one to re-use it across calls.
    """
    config = config or SparseAttentionConfig()
    _check_qkv(q, k, v, grid)
    if bank is None:
        bank = make_bank(grid, config, q.device)
    elif bank.grid != grid or bank.block_size != config.block_size or bank.device != q.device:
        raise ValueError("the PatternBank was built for another grid, block size or device")
    B, H = q.shape[:2]
    if config.density is None and config.recall >= 1.0:
        patterns = torch.full((B, H), bank.dense_index, dtype=torch.int32, device=q.device)
        return HeadPlan(bank, patterns, q.shape[:3], config.backend)
    recall = sampled_recall(q, k, bank, scale, config.backend)
    if config.density is not None:
        patterns = recall.argmax(-1)
    else:
        accepted = (recall >= config.recall) | bank.is_dense
        patterns = torch.where(accepted, bank.densities, float("inf")).argmin(-1)
    return HeadPlan(bank, patterns, q.shape[:3], config.backend)
