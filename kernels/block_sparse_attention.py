"""Block-sparse flash attention (forward) in Triton, and its PyTorch reference.

Query block i of (batch b, head h) attends exactly the key blocks
`kv_indices[b, h, i, :kv_counts[b, h, i]]`. Index tables may be broadcast views (size-1 or
stride-0 B/H dims), so a few shared templates serve all heads without copies.

With `order=` (a `TokenOrder`), the heads named by `reordered_heads` are attended in
position-major token order: their block lists index blocks of the reordered sequence. Outputs
are written through the index map (no copy back); on the TMA path the chosen heads of q, k and
v get one reordering pass so their tiles stay contiguous (the others are read in place), on the
pointer path they are gathered in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .reorder import (
    TokenOrder,
    _head_mask,
    native_rows,
    order_args,
    order_from_args,
    reorder_flagged_heads,
    reorder_tokens_reference,
)
from .utils import OP_TAGS, cdiv, check_backend, next_power_of_2, use_triton

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and pipelining of the Triton kernel (BLOCK_M and BLOCK_N divide block_size)."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = True  # TMA tiles where possible (Hopper+, D a power of two, aligned strides)
    tail_branch: bool = False  # mask only the last key block instead of every tile
    # programs the GPU runs at once (SMs x programs per SM); > 1 starts each program's key list
    # at its phase among them, so that the programs running together walk the key range in step
    # and share key tiles in L2 (random lists at S >= 75k: up to +16%); 0 or 1: from the start
    resident_programs: int = 0

    def as_args(self) -> list[int]:
        """The fields, in order, as the op's `config` argument (bools as 0/1)."""
        return [self.block_m, self.block_n, self.num_warps, self.num_stages, int(self.tma),
                int(self.tail_branch), self.resident_programs]

    @classmethod
    def from_args(cls, args: list[int]) -> "KernelConfig":
        """The inverse of `as_args`."""
        block_m, block_n, num_warps, num_stages, tma, tail_branch, resident_programs = args
        return cls(block_m, block_n, num_warps, num_stages, bool(tma), bool(tail_branch), resident_programs)


def default_config(block_size: int, tma: bool = True, device: torch.device | str | None = None) -> KernelConfig:
    """Tuned on an H100 (docs/results/kernel_sweep_h100.json): 128 x 64 tiles, 4 warps, 2 stages
    (two programs per SM); TMA tiles with the tail-only mask, pointer tiles with the per-tile
    mask; on a CUDA `device`, key lists rotated by launch phase over its 2 x SMs resident
    programs (docs/results/kernel_phase_h100.md), elsewhere walked from the start."""
    block_m = min(128, block_size)
    block_n = min(64, block_size)
    sms = 0
    if device is not None and torch.device(device).type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    return KernelConfig(block_m, block_n, num_warps=4, num_stages=2, tma=tma, tail_branch=tma,
                        resident_programs=2 * sms)


@triton.jit
def _online_softmax_step(q, k, v, m_i, l_i, acc, cols, S, qk_scale, is_tail, TAIL_BRANCH: tl.constexpr):
    """One key tile of flash attention's online softmax (scores in log2 units)."""
    qk = tl.dot(q, tl.trans(k))
    if TAIL_BRANCH:
        # mask only the last key block; the other tiles skip the bias add
        if is_tail:
            qk = tl.where((cols < S)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    else:
        qk = qk * qk_scale + tl.where(cols < S, 0.0, float("-inf"))[None, :]
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i, acc


@triton.jit
def _empty_softmax_state(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Running max (log2 units), running sum and output accumulator before any key tile."""
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    return m_i, l_i, acc


@triton.jit
def _key_tile_start(idx_row, j, first, n, sin_, NB, SUB: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """First key row of the j-th tile visited in a query block's list of n tiles (SUB per listed
    block), visited from tile `first` on and wrapping around, and whether it lies in the last
    (possibly partial) block. Bad indices are clamped, never read."""
    j = j + first
    j = tl.where(j >= n, j - n, j)
    kb = tl.load(idx_row + (j // SUB) * sin_)
    kb = tl.minimum(tl.maximum(kb, 0), NB - 1)
    return kb * BLOCK_SIZE + (j % SUB) * BLOCK_N, kb == NB - 1


@triton.jit
def _key_block_list(IDX, CNT, TMPL, b, h, qblk, sib, sih, sim, scb, sch, scm, stb, sth, sit, sct, NT,
                    HAS_TEMPLATES: tl.constexpr):
    """Where the key-block list of query block `qblk` of (b, h) starts, and its length.
    The list lives at (b, h) of the tables, shifted by the head's template (0 without one)."""
    t = 0
    if HAS_TEMPLATES:
        t = tl.load(TMPL + b * stb + h * sth).to(tl.int64)
        t = tl.minimum(tl.maximum(t, 0), NT - 1)
    count = tl.load(CNT + b * scb + h * sch + t * sct + qblk * scm)
    return IDX + b * sib + h * sih + t * sit + qblk * sim, count


@triton.jit
def _program_query_tile(IDX, CNT, TMPL, H, sib, sih, sim, scb, sch, scm, stb, sth, sit, sct, NT,
                        BLOCK_M: tl.constexpr, BLOCK_SIZE: tl.constexpr, HAS_TEMPLATES: tl.constexpr):
    """This program's query tile: batch and head (plain and int64), the start and length of its
    key-block list, and its query rows (grid: query tiles x batch * heads)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    qblk = (pid_m * BLOCK_M) // BLOCK_SIZE
    idx_row, count = _key_block_list(IDX, CNT, TMPL, b64, h64, qblk, sib, sih, sim, scb, sch, scm, stb, sth, sit, sct, NT,
                                     HAS_TEMPLATES)
    return b, h, b64, h64, idx_row, count, pid_m * BLOCK_M + tl.arange(0, BLOCK_M)


@triton.jit
def _first_tile(count, pid_m, pid_bh, RESIDENT, SUB: tl.constexpr, ROTATE: tl.constexpr):
    """Which of its count * SUB key tiles this program starts at: the first tile of the listed
    block at its launch phase among the RESIDENT programs that run at once (programs start in
    launch order as others finish, so with these phases all running programs reach the same part
    of the key range together). A block's first tile always holds a key, so the running max is
    finite from the first tile on."""
    first = 0
    if ROTATE:
        phase = (pid_bh * tl.num_programs(0) + pid_m) % RESIDENT
        first = (phase * count) // RESIDENT * SUB
    return first


@triton.jit
def _finish(acc, m_i, l_i):
    """Normalised output and natural-log lse; empty rows give 0 and -inf."""
    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    lse = tl.where(nonempty, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    return acc / l_safe[:, None], lse


@triton.jit
def _attend_query_tile(q_desc, k_desc, v_desc, b, h, pid_m, pid_bh, idx_row, count, sin_, S, NB, qk_scale,
                       RESIDENT, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_SIZE: tl.constexpr, TAIL_BRANCH: tl.constexpr, ROTATE: tl.constexpr):
    """Output and lse of one query tile over its listed key blocks, every tile moved by TMA."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    q = q_desc.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
    m_i, l_i, acc = _empty_softmax_state(BLOCK_M, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    n = count * SUB
    first = _first_tile(count, pid_m, pid_bh, RESIDENT, SUB, ROTATE)
    for j in range(0, n):
        start, is_tail = _key_tile_start(idx_row, j, first, n, sin_, NB, SUB, BLOCK_SIZE, BLOCK_N)
        k = k_desc.load([b, h, start, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_desc.load([b, h, start, 0]).reshape(BLOCK_N, BLOCK_D)
        m_i, l_i, acc = _online_softmax_step(q, k, v, m_i, l_i, acc, start + offs_n, S, qk_scale, is_tail, TAIL_BRANCH)
    return _finish(acc, m_i, l_i)


@triton.jit
def _bsa_fwd_tma_kernel(
    O, q_desc, k_desc, v_desc, qr_desc, kr_desc, vr_desc, o_desc, LSE, IDX, CNT, RH, TMPL,
    sob, soh, sos, sib, sih, sim, sin_, scb, sch, scm, srb, srh, stb, sth, sit, sct, NT,
    H, S, NB, qk_scale,
    VSTART, FRAMES, POSITIONS,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, REORDER: tl.constexpr, RETURN_LSE: tl.constexpr, TAIL_BRANCH: tl.constexpr,
    HAS_TEMPLATES: tl.constexpr, RESIDENT, ROTATE: tl.constexpr,
):
    """Tiles move by TMA (D == BLOCK_D, 16-byte aligned strides). With REORDER, heads flagged
    in RH read position-major copies of q, k and v (qr/kr/vr, written for those heads only)
    and write their output through the position-major index map (a plain store per tile, so
    no copy back); the other heads read q, k and v in place."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, b64, h64, idx_row, count, rows = _program_query_tile(IDX, CNT, TMPL, H, sib, sih, sim, scb, sch, scm, stb, sth,
                                                               sit, sct, NT, BLOCK_M, BLOCK_SIZE, HAS_TEMPLATES)
    flag = 0
    qd, kd, vd = q_desc, k_desc, v_desc
    if REORDER:
        flag = tl.load(RH + b64 * srb + h64 * srh)
        if flag != 0:  # choose the tensors, not the code path: one pipelined loop serves both
            qd, kd, vd = qr_desc, kr_desc, vr_desc
    out, lse = _attend_query_tile(qd, kd, vd, b, h, pid_m, pid_bh, idx_row, count, sin_, S, NB, qk_scale,
                                  RESIDENT, BLOCK_D, BLOCK_M, BLOCK_N, BLOCK_SIZE, TAIL_BRANCH, ROTATE)
    if flag != 0:
        out_rows = native_rows(rows, flag, VSTART, FRAMES, POSITIONS).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        tl.store(O + b64 * sob + h64 * soh + out_rows[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty), mask=(rows < S)[:, None])
    else:
        o_desc.store([b, h, pid_m * BLOCK_M, 0], out.to(o_desc.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))
        out_rows = rows.to(tl.int64)
    if RETURN_LSE:
        tl.store(LSE + pid_bh.to(tl.int64) * S + out_rows, lse, mask=rows < S)


@triton.jit
def _bsa_fwd_kernel(
    Q, K, V, O, LSE, IDX, CNT, RH, TMPL,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
    sib, sih, sim, sin_, scb, sch, scm, srb, srh, stb, sth, sit, sct, NT,
    H, S, NB, qk_scale,
    VSTART, FRAMES, POSITIONS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, REORDER: tl.constexpr, RETURN_LSE: tl.constexpr, TAIL_BRANCH: tl.constexpr,
    HAS_TEMPLATES: tl.constexpr, RESIDENT, ROTATE: tl.constexpr,
):
    """Pointer loads: any strides, any D, and reordered heads read through the index map."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    _, _, b, h, idx_row, count, rows = _program_query_tile(IDX, CNT, TMPL, H, sib, sih, sim, scb, sch, scm, stb, sth, sit,
                                                           sct, NT, BLOCK_M, BLOCK_SIZE, HAS_TEMPLATES)
    flag = 0
    if REORDER:
        flag = tl.load(RH + b * srb + h * srh)
    row_ok = rows < S
    q_rows = rows
    if REORDER:
        q_rows = native_rows(rows, flag, VSTART, FRAMES, POSITIONS)
    q_rows = tl.minimum(q_rows, S - 1).to(tl.int64)

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + q_rows[:, None] * sqs + offs_d[None, :], mask=d_ok[None, :])

    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_i, l_i, acc = _empty_softmax_state(BLOCK_M, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    n = count * SUB
    first = _first_tile(count, pid_m, pid_bh, RESIDENT, SUB, ROTATE)
    for j in range(0, n):
        start, is_tail = _key_tile_start(idx_row, j, first, n, sin_, NB, SUB, BLOCK_SIZE, BLOCK_N)
        cols = start + offs_n
        k_rows = cols
        if REORDER:
            k_rows = native_rows(cols, flag, VSTART, FRAMES, POSITIONS)
        k_rows = tl.minimum(k_rows, S - 1).to(tl.int64)
        k = tl.load(k_base + k_rows[:, None] * sks + offs_d[None, :], mask=d_ok[None, :])
        v = tl.load(v_base + k_rows[:, None] * svs + offs_d[None, :], mask=d_ok[None, :])
        m_i, l_i, acc = _online_softmax_step(q, k, v, m_i, l_i, acc, cols, S, qk_scale, is_tail, TAIL_BRANCH)
    out, lse = _finish(acc, m_i, l_i)
    tl.store(
        O + b * sob + h * soh + q_rows[:, None] * sos + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    if RETURN_LSE:
        tl.store(LSE + pid_bh.to(tl.int64) * S + q_rows, lse, mask=row_ok)


def _tma_ok(*tensors) -> bool:
    """TMA needs a Hopper-or-newer GPU (or the interpreter), 16-byte aligned bases and strides."""
    t0 = tensors[0]
    if t0.is_cuda and torch.cuda.get_device_capability(t0.device)[0] < 9:
        return False
    return all(
        t.data_ptr() % 16 == 0 and all((st * t.element_size()) % 16 == 0 for st in t.stride()[:-1])
        for t in tensors
    )


@dataclass(frozen=True)
class _Tables:
    """Key-block lists as the kernels address them: the list of query block i of (b, h) is
    idx[b, h, t, i] with t = tmpl[b, h] (t = 0 and a size-1 template dim without templates)."""

    idx: torch.Tensor  # (B, H, T, nb, M) view
    cnt: torch.Tensor  # (B, H, T, nb) view
    tmpl: torch.Tensor | None  # (B, H) view; None without templates (T = 1)

    def dense(self):
        """Per-head (B, H, nb, M) index and (B, H, nb) count tables (for the reference)."""
        if self.tmpl is None:
            return self.idx[:, :, 0], self.cnt[:, :, 0]
        t = self.tmpl.long()[..., None, None, None]
        idx = self.idx.expand(*t.shape[:2], *self.idx.shape[2:]).take_along_dim(t, 2)[:, :, 0]
        cnt = self.cnt.expand(*t.shape[:2], *self.cnt.shape[2:]).take_along_dim(t[..., 0], 2)[:, :, 0]
        return idx, cnt

    def strides(self):
        """Stride arguments of the kernels, in their order."""
        sib, sih, sit, sim, sin_ = self.idx.stride()
        scb, sch, sct, scm = self.cnt.stride()
        stb, sth = (0, 0) if self.tmpl is None else self.tmpl.stride()
        return (sib, sih, sim, sin_, scb, sch, scm), (stb, sth, sit, sct, self.idx.shape[2])

    def template_arg(self):
        """The kernels' TMPL argument: the template table, or any int32 tensor when there is none
        (then never read), so a call without templates makes no tensor on the device."""
        return self.cnt if self.tmpl is None else self.tmpl


def _fits(shape, target) -> bool:
    """Whether a tensor of `shape` broadcasts to `target` (as `expand` would)."""
    return len(shape) <= len(target) and all(n in (1, t) for n, t in zip(reversed(shape), reversed(target)))


def _pattern_tensor(head_pattern, device) -> torch.Tensor | None:
    """head_pattern (None, an int, a list or a tensor) as a tensor on `device`."""
    return None if head_pattern is None else torch.as_tensor(head_pattern, device=device)


def _check_inputs(q, k, v, kv_indices, kv_counts, block_size, head_pattern=None):
    """Validate shapes and dtypes (host side, no data read); `head_pattern` as `_pattern_tensor`."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must all be (B, H, S, D) with the same shape (self-attention), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v must have a contiguous last (head) dimension")
    B, H, S, D = q.shape
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is not supported: 1..{MAX_HEAD_DIM}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    nb = cdiv(S, block_size)
    if kv_indices.dtype != torch.int32 or kv_counts.dtype != torch.int32:
        raise ValueError(f"kv_indices and kv_counts must be int32, got {kv_indices.dtype} and {kv_counts.dtype}")
    lead = "(B, H, " if head_pattern is None else "(num_templates, "
    want = 4 if head_pattern is None else 3
    if kv_indices.dim() != want or kv_counts.dim() != want - 1:
        raise ValueError(
            f"kv_indices must be {lead}{nb}, max_kv_blocks) and kv_counts {lead}{nb}); "
            f"got {tuple(kv_indices.shape)} and {tuple(kv_counts.shape)}"
        )
    M = kv_indices.shape[-1]
    if head_pattern is None:
        fits = _fits(kv_indices.shape, (B, H, nb, M)) and _fits(kv_counts.shape, (B, H, nb))
    else:
        T = kv_indices.shape[0]
        fits = _fits(kv_indices.shape, (T, nb, M)) and _fits(kv_counts.shape, (T, nb)) and _fits(head_pattern.shape, (B, H))
    if not fits:
        raise ValueError(
            f"index tables of shapes {tuple(kv_indices.shape)} / {tuple(kv_counts.shape)} (head_pattern "
            f"{None if head_pattern is None else tuple(head_pattern.shape)}) do not fit "
            f"(B, H, S/block_size) = ({B}, {H}, {nb}) for S={S}, block_size={block_size}"
        )
    if head_pattern is not None and head_pattern.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"head_pattern must hold integer template indices, got {head_pattern.dtype}")
    if kv_indices.device != q.device or kv_counts.device != q.device:
        raise ValueError(f"kv_indices and kv_counts must be on q's device {q.device}")


def _tables(q, kv_indices, kv_counts, head_pattern, block_size) -> _Tables:
    """The index tables of checked inputs as the kernels address them (views, no copies)."""
    B, H, S, _ = q.shape
    nb = cdiv(S, block_size)
    M = kv_indices.shape[-1]
    if head_pattern is None:
        return _Tables(kv_indices.expand(B, H, nb, M).unsqueeze(2), kv_counts.expand(B, H, nb).unsqueeze(2), None)
    T = kv_indices.shape[0]
    return _Tables(kv_indices.expand(B, H, T, nb, M), kv_counts.expand(B, H, T, nb), head_pattern.expand(B, H))


def _block_mask(idx: torch.Tensor, cnt: torch.Tensor, nb: int) -> torch.Tensor:
    """Dense (B, H, nb, nb) bool block mask from index lists (block level only: small)."""
    valid = torch.arange(idx.shape[-1], device=idx.device) < cnt[..., None]
    if bool((cnt < 0).any()) or bool((cnt > idx.shape[-1]).any()):
        raise ValueError(f"kv_counts must lie in [0, {idx.shape[-1]}]")
    if bool((valid & ((idx < 0) | (idx >= nb))).any()):
        raise ValueError(f"kv_indices must lie in [0, {nb}) where counted")
    sel = idx.long().where(valid, nb)
    mask = torch.zeros(*idx.shape[:3], nb + 1, dtype=torch.bool, device=idx.device)
    mask.scatter_(3, sel, True)
    return mask[..., :nb]


def _reorder_args(order, reordered_heads, B, H, S, device):
    if order is None:
        if reordered_heads is not None:
            raise ValueError("reordered_heads needs order= (a TokenOrder)")
        return None
    if not isinstance(order, TokenOrder):
        raise ValueError(f"order must be a TokenOrder, got {type(order).__name__}")
    if order.num_tokens != S:
        raise ValueError(f"order describes {order.num_tokens} tokens but S = {S}")
    return _head_mask(reordered_heads, B, H, device)


def block_sparse_attention_reference(
    q, k, v, kv_indices, kv_counts, *, block_size=128, scale=None, return_lse=False, backend="torch",
    order=None, reordered_heads=None, head_pattern=None,
):
    """Plain PyTorch block-sparse attention, same semantics as `block_sparse_attention`.

    Computes in float32, a chunk of query blocks at a time, so no (B, H, S, S) tensor exists.
    """
    check_backend(backend)
    head_pattern = _pattern_tensor(head_pattern, q.device)
    _check_inputs(q, k, v, kv_indices, kv_counts, block_size, head_pattern)
    B, H, S, _ = q.shape
    heads = _reorder_args(order, reordered_heads, B, H, S, q.device)
    out, lse = _attend_reference(q, k, v, _tables(q, kv_indices, kv_counts, head_pattern, block_size),
                                 block_size, scale, order, heads)
    return (out, lse) if return_lse else out


def _attend_reference(q, k, v, tables: _Tables, block_size, scale, order, heads):
    """Output (laid out by `_output_like`) and lse of the reference, for checked inputs; raises
    on out-of-range templates or block indices (it reads the tables anyway)."""
    num_templates = tables.idx.shape[2]
    if tables.tmpl is not None and (bool((tables.tmpl < 0).any()) or bool((tables.tmpl >= num_templates).any())):
        raise ValueError(f"head_pattern must lie in [0, {num_templates}) (one of the {num_templates} templates)")
    idx, cnt = tables.dense()
    result = _output_like(q)
    B, H, S, D = q.shape
    if heads is not None:
        q, k, v = (reorder_tokens_reference(t, order, heads) for t in (q, k, v))
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    nb = cdiv(S, block_size)
    mask = _block_mask(idx, cnt, nb)
    kf, vf = k.float(), v.float()
    out = torch.empty(B, H, S, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
    rows_per_chunk = max(block_size, (1 << 24) // max(1, B * H * S) // block_size * block_size)
    for r0 in range(0, S, rows_per_chunk):
        r1 = min(S, r0 + rows_per_chunk)
        scores = q[:, :, r0:r1].float() @ kf.transpose(-1, -2) * scale
        m = mask[:, :, r0 // block_size : cdiv(r1, block_size)]
        m = m.repeat_interleave(block_size, 2)[:, :, : r1 - r0].repeat_interleave(block_size, 3)[..., :S]
        scores.masked_fill_(~m, float("-inf"))
        chunk_lse = torch.logsumexp(scores, -1)
        safe = torch.where(torch.isfinite(chunk_lse), chunk_lse, torch.zeros_like(chunk_lse))
        out[:, :, r0:r1] = torch.exp(scores - safe[..., None]) @ vf
        lse[:, :, r0:r1] = chunk_lse
    if heads is not None:
        out = reorder_tokens_reference(out, order, heads, inverse=True)
        lse = reorder_tokens_reference(lse[..., None], order, heads, inverse=True)[..., 0]
    return result.copy_(out), lse


def _output_like(q: torch.Tensor) -> torch.Tensor:
    """An empty output for (B, H, S, D) q, laid out as q is: a (B, S, H, D) buffer when q is a
    view of one (diffusers' layout, where heads vary faster than tokens), so that the caller's
    transpose back to (B, S, H, D) and its flatten of the heads cost no copy; else contiguous."""
    B, H, S, D = q.shape
    if H > 1 and S > 1 and q.stride(1) < q.stride(2):
        return torch.empty(B, S, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    return torch.empty(B, H, S, D, dtype=q.dtype, device=q.device)


def block_sparse_attention(
    q, k, v, kv_indices, kv_counts, *, block_size=128, scale=None, return_lse=False, backend="auto",
    order=None, reordered_heads=None, head_pattern=None, config: KernelConfig | None = None,
):
    """Block-sparse attention over (B, H, S, D) q, k, v.

    kv_indices: int32 (B, H, ceil(S / block_size), max_kv_blocks) and kv_counts: int32
    (B, H, ceil(S / block_size)); size-1 or expanded B/H dims are fine. A query block with
    count 0 gives zeros (lse = -inf). Returns the output in q's dtype and layout (see
    `_output_like`) and, with `return_lse=True`, the natural-log log-sum-exp per query row,
    (B, H, S) float32.

    order / reordered_heads: attend the chosen heads (default: all) in position-major order of
    `order`, a `TokenOrder`; their block lists refer to that order; output stays native.

    head_pattern: shared templates instead of per-head tables. kv_indices is then
    (T, ceil(S / block_size), max_kv_blocks) and kv_counts (T, ceil(S / block_size)): T key-block
    templates, and head_pattern (int, broadcastable to (B, H)) says which one each head uses.

    backend: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch" (the reference), or
    "auto" (Triton on CUDA, the reference on CPU). Block indices are not range-checked on the
    Triton path (that would synchronise with the host); out-of-range ones are clamped.

    Checks its arguments on the host, then calls the op `dit_sparse::block_sparse_attention`
    (one op for eager and compiled callers; torch.compile does not trace into it).
    """
    check_backend(backend)
    head_pattern = _pattern_tensor(head_pattern, q.device)
    _check_inputs(q, k, v, kv_indices, kv_counts, block_size, head_pattern)
    B, H, S, _ = q.shape
    heads = _reorder_args(order, reordered_heads, B, H, S, q.device)
    backend = "triton" if use_triton(backend, q) else "torch"
    if backend == "triton" and config is not None and (block_size % config.block_m or block_size % config.block_n):
        raise ValueError(f"tile {config.block_m}x{config.block_n} does not divide block_size {block_size}")
    out, lse = _block_sparse_attention_op(
        q, k, v, kv_indices, kv_counts, head_pattern, heads, *order_args(order), block_size, scale, return_lse,
        backend, None if config is None else config.as_args(),
    )
    return (out, lse) if return_lse else out


@torch.library.custom_op("dit_sparse::block_sparse_attention", mutates_args=(), tags=OP_TAGS)
def _block_sparse_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_indices: torch.Tensor, kv_counts: torch.Tensor,
    head_pattern: torch.Tensor | None, reordered_heads: torch.Tensor | None, frames: int, positions: int,
    text_len: int, text_position: str, block_size: int, scale: float | None, return_lse: bool, backend: str,
    config: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_sparse_attention` as an operator (opaque to torch.compile, so Inductor never
    recompiles the Triton sources), for inputs `_check_inputs` accepts: `head_pattern` a
    tensor, `reordered_heads` the int8 (B, H) mask of `_head_mask` (None: no reordering), the
    order as `order_args`, the config as `KernelConfig.as_args` (None: `default_config`),
    backend "triton", "torch" or "auto". Returns (output, lse); lse is empty without
    `return_lse` (an op's outputs are fixed by its schema)."""
    tables = _tables(q, kv_indices, kv_counts, head_pattern, block_size)
    order = order_from_args(frames, positions, text_len, text_position) if reordered_heads is not None else None
    if not use_triton(backend, q):
        out, lse = _attend_reference(q, k, v, tables, block_size, scale, order, reordered_heads)
        return out, lse if return_lse else _no_lse(q)
    return _attend_triton(q, k, v, tables, block_size, scale, order, reordered_heads, return_lse,
                          None if config is None else KernelConfig.from_args(config))


@_block_sparse_attention_op.register_fake
def _(q, k, v, kv_indices, kv_counts, head_pattern, reordered_heads, frames, positions, text_len, text_position,
      block_size, scale, return_lse, backend, config):
    B, H, S, _ = q.shape
    return _output_like(q), q.new_empty((B, H, S), dtype=torch.float32) if return_lse else _no_lse(q)


def _no_lse(q: torch.Tensor) -> torch.Tensor:
    """The op's lse output when none was asked for."""
    return q.new_empty(0, dtype=torch.float32)


def _attend_triton(q, k, v, tables: _Tables, block_size, scale, order, heads, return_lse, config):
    """One launch of the TMA or pointer kernel; (output, lse), lse empty without `return_lse`."""
    table_strides, template_strides = tables.strides()
    B, H, S, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = _output_like(q)
    tma = _tma_ok(q, k, v, out)
    cfg = config or default_config(block_size, tma, q.device)
    lse = torch.empty(B, H, S, dtype=torch.float32, device=q.device) if return_lse else out  # never written
    block_d = max(16, next_power_of_2(D))
    grid = (cdiv(S, cfg.block_m), B * H)
    common = dict(
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_SIZE=block_size, RETURN_LSE=return_lse,
        TAIL_BRANCH=cfg.tail_branch, REORDER=heads is not None, HAS_TEMPLATES=tables.tmpl is not None,
        RESIDENT=max(1, cfg.resident_programs), ROTATE=cfg.resident_programs > 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    tmpl = tables.template_arg()
    rh = heads if heads is not None else tmpl  # never read without reordering
    o = order or TokenOrder(1, 1)
    if cfg.tma and tma and D == block_d:
        # one pass over the flagged heads of q, k, v buys them contiguous TMA tiles in the hot loop
        native = (q, k, v)
        reordered = tuple(reorder_flagged_heads(t, order, heads) for t in native) if heads is not None else native
        descs = [
            TensorDescriptor.from_tensor(t, [1, 1, cfg.block_m if i == 0 or i == 3 else cfg.block_n, D])
            for i, t in enumerate((*native, out))
        ]
        rdescs = descs[:3] if heads is None else [
            TensorDescriptor.from_tensor(t, [1, 1, cfg.block_m if i == 0 else cfg.block_n, D])
            for i, t in enumerate(reordered)
        ]
        _bsa_fwd_tma_kernel[grid](
            out, *descs[:3], *rdescs, descs[3], lse, tables.idx, tables.cnt, rh, tmpl,
            *out.stride()[:3], *table_strides, rh.stride(0), rh.stride(1), *template_strides,
            H, S, cdiv(S, block_size), scale * LOG2E,
            o.video_start, o.frames, o.positions, BLOCK_D=block_d, **common,
        )
    else:
        _bsa_fwd_kernel[grid](
            q, k, v, out, lse, tables.idx, tables.cnt, rh, tmpl,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            *table_strides, rh.stride(0), rh.stride(1), *template_strides,
            H, S, cdiv(S, block_size), scale * LOG2E,
            o.video_start, o.frames, o.positions,
            D=D, BLOCK_D=block_d, **common,
        )
    return out, lse if return_lse else _no_lse(q)
