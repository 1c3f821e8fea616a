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

import warnings

import torch
import torch.nn.functional as F

from dit_sparse.kernels import block_sparse_attention, quantized_block_sparse_attention, sampled_block_lse
from dit_sparse.kernels.utils import interpreting

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .pattern_bank import PatternBank


class HeadPlan:
    """The pattern of every (batch item, head) of one layer's attention calls, and how to run it.

    patterns: (B, H) int32 index into the bank's candidates, on the device; None until the plan
    is first profiled. Re-profiling writes the same tensors in place, so a compiled call (or a
    CUDA graph) that reads them sees the new plan without a recompile. Neither profiling nor
    attending under a plan reads the device: temporal heads are flagged by a device mask the
    kernel reads. `kinds`, `density` and `mean_density` (for statistics) read the patterns back.
    `heads`: the global indices of the heads the plan covers where a call holds only some of a
    layer's heads (a rank under Ulysses), else None.
    `precision`: "bf16" (the block-sparse kernel in the inputs' dtype), "int8" or "fp8" (the
    quantized kernel); `run_precision(...)` says which one runs on the bank's device.
    """

    def __init__(self, bank: PatternBank, backend: str = "auto", precision: str = "bf16"):
        self.bank = bank
        self.grid = bank.grid
        self.backend = backend
        self.precision = run_precision(precision, backend, bank.device)
        self.patterns: torch.Tensor | None = None
        self.reordered: torch.Tensor | None = None  # (B, H) bool: heads attended position-major
        self.heads: range | None = None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(B, H, S) of the calls it serves (None before it is profiled)."""
        return None if self.patterns is None else (*self.patterns.shape, self.grid.num_tokens)

    def set_patterns(self, patterns: torch.Tensor, heads: range | None = None):
        """Adopt new (B, H) patterns: written into the plan's tensors in place when the shape is
        unchanged (their addresses stay), else in new ones."""
        patterns = patterns.to(torch.int32)
        reordered = self.bank.temporal[patterns.long()]
        if self.patterns is not None and self.patterns.shape == patterns.shape:
            self.patterns.copy_(patterns)
            self.reordered.copy_(reordered)
        else:
            self.patterns, self.reordered = patterns.clone(), reordered  # the caller may keep `patterns`
        self.heads = heads

    @property
    def kinds(self) -> list[list[str]]:
        """Per batch item, per head: "spatial", "temporal" or "dense"."""
        return self.bank.kinds(self.patterns)

    @property
    def density(self) -> torch.Tensor:
        """(B, H) float tensor (CPU) of the fraction of blocks each head computes."""
        return self.bank.density_of(self.patterns)

    @property
    def mean_density(self) -> float:
        return float(self.density.mean())

    def fits(self, q: torch.Tensor) -> bool:
        """Whether the plan has patterns for calls with these (B, H, S, D) queries."""
        return self.shape == tuple(q.shape[:3])

    def attend(self, q, k, v, scale=None) -> torch.Tensor:
        """Attention of (B, H, S, D) q, k, v under this plan; output in native order. No host
        synchronisation: everything it reads is already on the device."""
        if not self.fits(q):
            raise ValueError(f"this plan serves (B, H, S) = {self.shape}, got q of shape {tuple(q.shape)}")
        order, reordered = self.grid.order, self.reordered
        if not self.patterns.is_cuda and not torch.compiler.is_compiling():
            # off the GPU reading the plan is free: skip what no head needs
            kinds = {kind for row in self.kinds for kind in row}
            if kinds == {"dense"} and self.precision == "bf16":
                return F.scaled_dot_product_attention(q, k, v, scale=scale)
            if "temporal" not in kinds:
                order = reordered = None
        bank = self.bank
        args = dict(head_pattern=self.patterns, block_size=bank.block_size, scale=scale, backend=self.backend,
                    order=order, reordered_heads=reordered)
        if self.precision != "bf16":
            return quantized_block_sparse_attention(q, k, v, bank.kv_indices, bank.kv_counts,
                                                    precision=self.precision, **args)
        return block_sparse_attention(q, k, v, bank.kv_indices, bank.kv_counts, **args)


def run_precision(precision: str, backend: str, device) -> str:
    """The precision a plan for `device` runs when `precision` is asked for: "int8" and "fp8"
    need a Hopper GPU for the quantized kernel (or Triton's interpreter on the CPU, with
    backend "triton"); backend "torch" runs the quantized PyTorch reference anywhere. Elsewhere
    they run "bf16" (unquantized), with a warning (Python shows it once per process)."""
    if precision == "bf16" or backend == "torch":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability[0] == 9:
            return precision
        where = f"{device} (compute capability {capability[0]}.{capability[1]})"
    elif backend == "triton" and interpreting():
        return precision
    else:
        where = str(device)
    warnings.warn(
        f"dit_sparse: precision={precision!r} needs a Hopper GPU (compute capability 9.x); on {where} the sparse "
        "attention runs unquantized (backend='torch' runs the quantized PyTorch reference instead)",
        RuntimeWarning, stacklevel=3,
    )
    return "bf16"


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


def choose_patterns(q, k, bank: PatternBank, config: SparseAttentionConfig, scale=None) -> torch.Tensor:
    """(B, H) candidate index per (batch item, head) of (B, H, S, D) q, k in native token order:
    the cheapest candidate whose sampled recall reaches `config.recall` (dense if none does), or
    in fixed-density mode the kind with the higher recall. Tensor work only (no host reads), so
    it runs inside compiled code."""
    B, H = q.shape[:2]
    if config.density is None and config.recall >= 1.0:
        return torch.full((B, H), bank.dense_index, dtype=torch.int32, device=q.device)
    recall = sampled_recall(q, k, bank, scale, config.backend)
    if config.density is not None:
        return recall.argmax(-1).to(torch.int32)
    accepted = (recall >= config.recall) | bank.is_dense
    return torch.where(accepted, bank.densities, float("inf")).argmin(-1).to(torch.int32)


def profile_heads(q, k, v, grid: TokenGrid, config: SparseAttentionConfig | None = None, *,
                  scale=None, bank: PatternBank | None = None) -> HeadPlan:
    """A plan choosing a pattern per (batch item, head) of (B, H, S, D) q, k, v in native token
    order. `bank` (the grid's candidates) is built when not given; pass one to re-use it."""
    config = config or SparseAttentionConfig()
    _check_qkv(q, k, v, grid)
    if bank is None:
        bank = make_bank(grid, config, q.device)
    elif bank.grid != grid or bank.block_size != config.block_size or bank.device != q.device:
        raise ValueError("the PatternBank was built for another grid, block size or device")
    plan = HeadPlan(bank, config.backend, config.precision)
    plan.set_patterns(choose_patterns(q, k, bank, config, scale))
    return plan
