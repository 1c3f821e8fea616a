"""Frame-major <-> position-major token reordering for chosen heads.

Video DiTs lay tokens out frame-major (frames slowest). A temporal head attends to the same
and nearby spatial positions across frames, which is a diagonal band only once tokens are
reordered position-major (frames fastest). `TokenOrder` describes the grid and where text
tokens sit; text tokens never move.

`reorder_tokens` makes a reordered copy in one pass (a Triton gather on CUDA, index_select in
the reference). The attention kernel can also read position-major heads in place through the
same index map (`order=` in `block_sparse_attention`), which costs no pass at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .utils import OP_TAGS, cdiv, check_backend, next_power_of_2, use_triton

TEXT_POSITIONS = ("none", "prefix", "suffix")
BLOCK_ROWS, NUM_WARPS = 32, 8
"""Rows per program and warps of the reordering pass: the fastest launch on an H200
(docs/results/reorder_h200.md)."""


@dataclass(frozen=True)
class TokenOrder:
    """A (frames, positions) token grid with `text_len` text tokens before or after it."""

    frames: int
    positions: int
    text_len: int = 0
    text_position: str = "none"

    def __post_init__(self):
        if self.frames < 1 or self.positions < 1:
            raise ValueError(f"frames and positions must be >= 1, got {self.frames} and {self.positions}")
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(f"text_position must be one of {TEXT_POSITIONS}, got {self.text_position!r}")
        if self.text_len < 0:
            raise ValueError(f"text_len must be >= 0, got {self.text_len}")
        if self.text_len and self.text_position == "none":
            raise ValueError("text_len > 0 needs text_position 'prefix' or 'suffix'")

    @property
    def num_tokens(self) -> int:
        return self.frames * self.positions + self.text_len

    @property
    def video_start(self) -> int:
        return self.text_len if self.text_position == "prefix" else 0

    def position_major_index(self, device=None) -> torch.Tensor:
        """perm with reordered[i] = native[perm[i]] (native -> position-major)."""
        idx = torch.arange(self.num_tokens, device=device)
        s0, f, p = self.video_start, self.frames, self.positions
        video = idx[s0 : s0 + f * p].view(f, p).t().reshape(-1)
        idx[s0 : s0 + f * p] = video
        return idx

    def frame_major_index(self, device=None) -> torch.Tensor:
        """The inverse permutation: native[i] = reordered[inv[i]]."""
        perm = self.position_major_index(device)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        return inv


def order_args(order: TokenOrder | None) -> tuple[int, int, int, str]:
    """`order` as the scalar arguments of the dit_sparse ops (frames, positions, text_len,
    text_position), since an op's schema takes no dataclasses; frames = 0 stands for None."""
    if order is None:
        return 0, 0, 0, "none"
    return order.frames, order.positions, order.text_len, order.text_position


def order_from_args(frames: int, positions: int, text_len: int, text_position: str) -> TokenOrder | None:
    """The inverse of `order_args`."""
    return TokenOrder(frames, positions, text_len, text_position) if frames else None


def _head_mask(heads, B: int, H: int, device) -> torch.Tensor:
    """Heads to reorder as an int8 (B, H) tensor (nonzero: reorder), from a bool/int tensor
    broadcastable to it or a list of head indices (applied to every batch item); such a mask
    itself is taken as it is (the references get it from the ops)."""
    if heads is None:
        return torch.ones(B, H, dtype=torch.int8, device=device)
    if not isinstance(heads, torch.Tensor):
        mask = torch.zeros(H, dtype=torch.int8)
        mask[list(heads)] = 1
        heads = mask
    heads = heads.to(device=device)
    if heads.dtype == torch.int8 and heads.shape == (B, H):
        return heads
    if heads.dim() == 1:
        heads = heads[None]
    try:
        return torch.broadcast_to(heads != 0, (B, H)).to(torch.int8)
    except RuntimeError as e:
        raise ValueError(f"heads of shape {tuple(heads.shape)} does not broadcast to (B, H) = ({B}, {H})") from e


def _check_tokens(x: torch.Tensor, order: TokenOrder):
    if x.dim() != 4:
        raise ValueError(f"expected a (B, H, S, D) tensor, got shape {tuple(x.shape)}")
    if x.shape[2] != order.num_tokens:
        raise ValueError(
            f"sequence length {x.shape[2]} does not match the grid: {order.frames} frames x "
            f"{order.positions} positions + {order.text_len} text tokens = {order.num_tokens}"
        )


def reorder_tokens_reference(x, order: TokenOrder, heads=None, *, inverse=False):
    """PyTorch reference of `reorder_tokens` (contiguous output, as the Triton pass writes it)."""
    _check_tokens(x, order)
    B, H = x.shape[:2]
    mask = _head_mask(heads, B, H, x.device).bool()
    index = order.frame_major_index(x.device) if inverse else order.position_major_index(x.device)
    out = x.clone(memory_format=torch.contiguous_format)
    out[mask] = x[mask].index_select(1, index)
    return out


@triton.jit
def native_rows(rows, flag, VSTART, FRAMES, POSITIONS):
    """Native row of each position-major row index (identity where flag == 0 or for text)."""
    j = rows - VSTART
    video = (j >= 0) & (j < FRAMES * POSITIONS) & (flag != 0)
    return tl.where(video, VSTART + (j % FRAMES) * POSITIONS + j // FRAMES, rows)


@triton.jit
def _reorder_kernel(
    X, Y, HEADS,
    sxb, sxh, sxs, syb, syh, sys_, shb, shh,
    H, S, D, VSTART, FRAMES, POSITIONS,
    INVERSE: tl.constexpr, FLAGGED_ONLY: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    flag = tl.load(HEADS + b * shb + h * shh)
    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    if INVERSE:
        # native -> position-major is the same map with the roles of frames and positions swapped
        src = native_rows(rows, flag, VSTART, POSITIONS, FRAMES)
    else:
        src = native_rows(rows, flag, VSTART, FRAMES, POSITIONS)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < S
    if FLAGGED_ONLY:
        row_ok = row_ok & (rows * 0 + flag != 0)
    m = row_ok[:, None] & (cols < D)[None, :]
    xb = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh
    yb = Y + b.to(tl.int64) * syb + h.to(tl.int64) * syh
    vals = tl.load(xb + src.to(tl.int64)[:, None] * sxs + cols[None, :], mask=m)
    tl.store(yb + rows.to(tl.int64)[:, None] * sys_ + cols[None, :], vals, mask=m)


def reorder_tokens(x, order: TokenOrder, heads=None, *, inverse=False, backend="auto"):
    """Reorder the tokens of the chosen heads of a (B, H, S, D) tensor.

    Native (frame-major) -> position-major, or back with `inverse=True`; text tokens stay in
    place and the other heads are copied unchanged. `heads`: None (all), a list of head
    indices, or a bool tensor broadcastable to (B, H). One read and one write of `x`, into a
    new contiguous tensor. Checks its arguments, then calls the op `dit_sparse::reorder_tokens`.
    """
    check_backend(backend)
    _check_tokens(x, order)
    if x.stride(-1) != 1:
        raise ValueError("the last dimension of x must be contiguous")
    backend = "triton" if use_triton(backend, x) else "torch"
    mask = _head_mask(heads, *x.shape[:2], x.device)
    return _reorder_tokens_op(x, *order_args(order), mask, inverse, backend)


@torch.library.custom_op("dit_sparse::reorder_tokens", mutates_args=(), tags=OP_TAGS)
def _reorder_tokens_op(x: torch.Tensor, frames: int, positions: int, text_len: int, text_position: str,
                       heads: torch.Tensor, inverse: bool, backend: str) -> torch.Tensor:
    """`reorder_tokens` as an operator (opaque to torch.compile): the order as `order_args`,
    `heads` an int8 (B, H) mask (nonzero: reorder), backend "triton", "torch" or "auto"."""
    order = TokenOrder(frames, positions, text_len, text_position)
    if use_triton(backend, x):
        return _launch_reorder(x, order, heads, inverse, flagged_only=False)
    return reorder_tokens_reference(x, order, heads, inverse=inverse)


@_reorder_tokens_op.register_fake
def _(x, frames, positions, text_len, text_position, heads, inverse, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def reorder_flagged_heads(x, order: TokenOrder, mask: torch.Tensor, *, block_s: int = BLOCK_ROWS,
                          num_warps: int = NUM_WARPS) -> torch.Tensor:
    """Position-major copy of the heads flagged in the int8 (B, H) `mask`; the other heads of
    the result are left unwritten (the attention kernel reads those from `x`), so the pass
    moves only the flagged heads' bytes. Triton only; `block_s` rows per program."""
    _check_tokens(x, order)
    return _launch_reorder(x, order, mask, False, flagged_only=True, block_s=block_s, num_warps=num_warps)


def _launch_reorder(x, order: TokenOrder, mask: torch.Tensor, inverse: bool, flagged_only: bool,
                    block_s: int = BLOCK_ROWS, num_warps: int = NUM_WARPS) -> torch.Tensor:
    B, H, S, D = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    grid = (cdiv(S, block_s), B * H)
    _reorder_kernel[grid](
        x, y, mask,
        *x.stride()[:3], *y.stride()[:3], *mask.stride(),
        H, S, D, order.video_start, order.frames, order.positions,
        INVERSE=inverse, FLAGGED_ONLY=flagged_only, BLOCK_S=block_s, BLOCK_D=next_power_of_2(D),
        num_warps=num_warps,
    )
    return y
