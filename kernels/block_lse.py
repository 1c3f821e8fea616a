"""Log-sum-exp of a few query rows' attention scores over each key block.

Head profiling needs, for a handful of sampled query rows, how much attention mass every key
block receives, in native order (spatial bands) and in position-major order (temporal bands).
`sampled_block_lse` gives the natural-log log-sum-exp of scale * q.k over the keys of each
block, so `softmax(lse, -1)` is the exact mass per block. One pass over K per layout, never a
rows x S score matrix in memory on the Triton path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .block_sparse_attention import LOG2E
from .reorder import TokenOrder, native_rows, order_args, order_from_args
from .utils import OP_TAGS, cdiv, check_backend, next_power_of_2, use_triton


def _check(q_rows, k, block_size, order):
    if q_rows.dim() != 4 or k.dim() != 4 or q_rows.shape[:2] != k.shape[:2] or q_rows.shape[3] != k.shape[3]:
        raise ValueError(
            f"q_rows must be (B, H, N, D) and k (B, H, S, D) with the same B, H, D; got "
            f"{tuple(q_rows.shape)} and {tuple(k.shape)}"
        )
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if order is not None and order.num_tokens != k.shape[2]:
        raise ValueError(f"order describes {order.num_tokens} tokens but k has {k.shape[2]}")


def sampled_block_lse_reference(q_rows, k, *, block_size=128, scale=None, order: TokenOrder | None = None):
    """PyTorch reference of `sampled_block_lse` (float32, a few heads at a time)."""
    _check(q_rows, k, block_size, order)
    B, H, N, D = q_rows.shape
    S = k.shape[2]
    nb = cdiv(S, block_size)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    layouts = [k] if order is None else [k, k.index_select(2, order.position_major_index(k.device))]
    out = torch.empty(B, H, len(layouts), N, nb, dtype=torch.float32, device=k.device)
    heads_per_chunk = max(1, (1 << 26) // max(1, B * N * nb * block_size))
    for layout, keys in enumerate(layouts):
        for h0 in range(0, H, heads_per_chunk):
            h1 = min(H, h0 + heads_per_chunk)
            scores = q_rows[:, h0:h1].float() @ keys[:, h0:h1].float().transpose(-1, -2) * scale
            scores = torch.nn.functional.pad(scores, (0, nb * block_size - S), value=float("-inf"))
            out[:, h0:h1, layout] = scores.unflatten(-1, (nb, block_size)).logsumexp(-1)
    return out


@triton.jit
def _block_lse_kernel(
    Q, K, OUT,
    sqb, sqh, sqn, skb, skh, sks, sob, soh, sol, son,
    H, N, S, NB, qk_scale, VSTART, FRAMES, POSITIONS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """One program per (run of BLOCKS_PER_PROGRAM key blocks, batch x head, layout): the
    sampled rows are loaded once and scored against every block of the run, whose key loads
    are pipelined. Layout 0 reads keys in native order, layout 1 through the position-major
    index map."""
    pid_j = tl.program_id(0)
    pid_bh = tl.program_id(1)
    layout = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + offs_d[None, :], mask=(rows < N)[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * skb + h * skh
    out_base = OUT + b * sob + h * soh + layout * sol + rows * son
    for i in tl.range(0, BLOCKS_PER_PROGRAM, num_stages=NUM_STAGES):
        j = pid_j * BLOCKS_PER_PROGRAM + i
        m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_Q], tl.float32)
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            cols = j * BLOCK_SIZE + sub * BLOCK_N + tl.arange(0, BLOCK_N)
            key_rows = tl.minimum(native_rows(cols, layout, VSTART, FRAMES, POSITIONS), S - 1).to(tl.int64)
            k = tl.load(k_base + key_rows[:, None] * sks + offs_d[None, :], mask=d_ok[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale + tl.where(cols < S, 0.0, float("-inf"))[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # log2 -> natural log
        tl.store(out_base + j, lse, mask=(rows < N) & (rows * 0 + j < NB))


@dataclass(frozen=True)
class LseConfig:
    """Launch shape of `_block_lse_kernel`; None fields are picked from the size (`resolve`)."""

    blocks_per_program: int | None = None
    block_n: int | None = None
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        if self.blocks_per_program is not None and self.blocks_per_program < 1:
            raise ValueError(f"blocks_per_program must be >= 1, got {self.blocks_per_program}")

    def as_args(self) -> list[int]:
        """The fields as the op's `config` argument (0 for None: picked from the size)."""
        return [self.blocks_per_program or 0, self.block_n or 0, self.num_warps, self.num_stages]

    @classmethod
    def from_args(cls, args: list[int] | None) -> "LseConfig":
        """The inverse of `as_args`; the default config for None."""
        if args is None:
            return cls()
        per, block_n, num_warps, num_stages = args
        return cls(per or None, block_n or None, num_warps, num_stages)

    def resolve(self, num_blocks: int, programs_per_block: int) -> "LseConfig":
        """Swept on an H200 (docs/results/profiling_h200.json): one key block per program in
        64-key tiles while that launches fewer than 16k programs (Wan 480p: 6k); beyond, runs
        of 8 blocks in 128-key tiles, which halve the programs' fixed cost (HunyuanVideo 720p)."""
        large = num_blocks * programs_per_block >= 16384
        per = self.blocks_per_program or (8 if large else 1)
        block_n = self.block_n or (128 if large else 64)
        return LseConfig(per, block_n, self.num_warps, self.num_stages)


def sampled_block_lse(q_rows, k, *, block_size=128, scale=None, order: TokenOrder | None = None, backend="auto",
                      config: LseConfig | None = None):
    """(B, H, L, N, nb) float32: log-sum-exp of scale * q_rows . k over the keys of each block.

    q_rows: (B, H, N, D), a few query rows (N up to a few hundred); k: (B, H, S, D) with a
    contiguous last dim. Layouts: L = 1 (blocks of the native order) without `order`; L = 2 with
    it, the second being the blocks of the position-major order of `order`. One launch,
    shaped by `config` (default `LseConfig()`). Checks its arguments, then calls the op
    `dit_sparse::sampled_block_lse`.
    """
    check_backend(backend)
    _check(q_rows, k, block_size, order)
    backend = "triton" if use_triton(backend, k) else "torch"
    if backend == "triton" and k.stride(-1) != 1:
        raise ValueError("k must have a contiguous last (head) dimension")
    return _sampled_block_lse_op(q_rows, k, block_size, scale, *order_args(order), backend,
                                 None if config is None else config.as_args())


@torch.library.custom_op("dit_sparse::sampled_block_lse", mutates_args=(), tags=OP_TAGS)
def _sampled_block_lse_op(q_rows: torch.Tensor, k: torch.Tensor, block_size: int, scale: float | None,
                          frames: int, positions: int, text_len: int, text_position: str, backend: str,
                          config: list[int] | None) -> torch.Tensor:
    """`sampled_block_lse` as an operator (opaque to torch.compile): the order as `order_args`,
    the config as `LseConfig.as_args`, backend "triton", "torch" or "auto"."""
    order = order_from_args(frames, positions, text_len, text_position)
    if not use_triton(backend, k):
        return sampled_block_lse_reference(q_rows, k, block_size=block_size, scale=scale, order=order)
    B, H, N, D = q_rows.shape
    S = k.shape[2]
    nb = cdiv(S, block_size)
    q_rows = q_rows.to(k.dtype).contiguous()
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    layouts = 1 if order is None else 2
    out = torch.empty(B, H, layouts, N, nb, dtype=torch.float32, device=k.device)
    o = order or TokenOrder(1, 1)
    cfg = LseConfig.from_args(config).resolve(nb, B * H * layouts)
    per = cfg.blocks_per_program
    _block_lse_kernel[(cdiv(nb, per), B * H, layouts)](
        q_rows, k, out,
        *q_rows.stride()[:3], *k.stride()[:3], *out.stride()[:4],
        H, N, S, nb, scale * LOG2E, o.video_start, o.frames, o.positions,
        D=D, BLOCK_D=max(16, next_power_of_2(D)), BLOCK_Q=max(16, next_power_of_2(N)),
        BLOCK_N=min(cfg.block_n, block_size), BLOCK_SIZE=block_size, BLOCKS_PER_PROGRAM=per,
        NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps,
    )
    return out


@_sampled_block_lse_op.register_fake
def _(q_rows, k, block_size, scale, frames, positions, text_len, text_position, backend, config):
    B, H, N, _ = q_rows.shape
    layouts = 1 if frames == 0 else 2
    return k.new_empty(B, H, layouts, N, cdiv(k.shape[2], block_size), dtype=torch.float32)
