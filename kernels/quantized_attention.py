"""Quantized block-sparse flash attention (forward) in Triton for Hopper, and its PyTorch reference.

The same block lists, head templates, reordered heads and output layout as
`block_sparse_attention`, with 8-bit tensor-core products (SageAttention2's recipe, see
`quantize.py` for the q, k, v side):

- Q·Kᵀ in int8 (int32 accumulation) or fp8 e4m3, dequantized by the query's scale times the key
  tile's;
- P·V in int8 or fp8 e4m3. P is quantized per (query row, key tile) against the tile's own row
  max, so that it fills the format's range whatever the running max; each tile's product is
  dequantized and added to the float32 accumulator (two-level accumulation: the 8-bit products
  of fp8 tensor cores accumulate with fewer bits than float32). The row sum takes the unrounded
  P. The value tile's scale and the running-max correction are one factor per row.

"int8" Q·Kᵀ with "int8" P·V keeps the relative L2 error near 2% on random inputs, where fp8 P·V
(three mantissa bits for P and V) is near 4% (docs/results/kernels_notes.md): the output of
near-uniform attention over zero-mean values is a sum that cancels, so the rounding errors of P
and V do not shrink with it.

q, k and v are quantized by one pass (`quantize_qkv`), which also writes the reordered heads
position-major, so every tile of the attention kernel moves by TMA and only the output of
reordered heads goes through the index map. Hopper (or the interpreter) only.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .block_sparse_attention import (
    LOG2E,
    KernelConfig,
    _block_mask,
    _check_inputs,
    _first_tile,
    _program_query_tile,
    _key_tile_start,
    _output_like,
    _pattern_tensor,
    _reorder_args,
    _Tables,
    _tables,
)
from .quantize import LIMITS, QuantizedQKV, check_formats, quantize_qkv, quantize_qkv_reference, to_fp8
from .reorder import TokenOrder, native_rows, order_args, order_from_args, reorder_tokens_reference
from .utils import OP_TAGS, cdiv, check_backend, interpreting, use_triton

PRECISIONS = ("int8", "fp8")
TAIL_GAP = 64.0
"""A key tile whose row max lies more than this many powers of two under the running max
quantizes its P against that running max minus TAIL_GAP instead (its weight is < 2**-64; this
keeps a key tile with no valid key, past the sequence's end, finite)."""


def default_quantized_config(block_size: int, device: torch.device | str | None = None) -> KernelConfig:
    """128 x 128 tiles, 8 warps, 3 stages: the fastest of the tiles tried on an H200 for both
    formats (docs/results/kernels_quantized_h200.md: 1.7 to 1.8x faster than the bf16 kernel's
    128 x 64, 4 warps, 2 stages); smaller blocks take block-sized tiles and 4 warps. Key lists
    rotated by launch phase over 2 x SMs resident programs on a CUDA device, as the bf16
    kernel's default. `block_n` is also the granularity of the k and v scales."""
    sms = 0
    if device is not None and torch.device(device).type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    tile = min(128, block_size)
    return KernelConfig(tile, tile, num_warps=8 if tile == 128 else 4, num_stages=3 if tile == 128 else 2, tma=True,
                        tail_branch=True, resident_programs=2 * sms)


def hopper_or_interpreter(x: torch.Tensor) -> bool:
    """Whether the quantized Triton kernel can run on x's device: a Hopper GPU (compute
    capability 9.x: TMA and 8-bit wgmma), or the CPU under TRITON_INTERPRET=1."""
    if x.is_cuda:
        return torch.cuda.get_device_capability(x.device)[0] == 9
    return interpreting()


def quantized_block_sparse_attention(
    q, k, v, kv_indices, kv_counts, *, block_size=128, scale=None, return_lse=False, backend="auto",
    order=None, reordered_heads=None, head_pattern=None, precision="int8", pv_precision=None,
    config: KernelConfig | None = None,
):
    """`block_sparse_attention` with 8-bit products: same arguments, semantics and output
    layout, plus `precision` ("int8" or "fp8": the format of q and k, and by default of P and
    v) and `pv_precision` (the P·V format, when it differs). `config.block_n` is also the tile of
    the k and v scales, so the reference (backend "torch") takes it too; `config.tma` and
    `config.tail_branch` are ignored (always TMA tiles, the last key block masked).

    backend: "triton" (a Hopper GPU, or the CPU under TRITON_INTERPRET=1), "torch" (the
    reference: the same quantization in PyTorch, on any device) or "auto" (Triton on CUDA, the
    reference on the CPU). Calls the op `dit_sparse::quantized_block_sparse_attention`, which
    counts the quantization pass in its time.
    """
    check_backend(backend)
    qk_fmt, pv_fmt = check_formats(precision, pv_precision)
    head_pattern = _pattern_tensor(head_pattern, q.device)
    _check_inputs(q, k, v, kv_indices, kv_counts, block_size, head_pattern)
    B, H, S, _ = q.shape
    heads = _reorder_args(order, reordered_heads, B, H, S, q.device)
    backend = "triton" if use_triton(backend, q) else "torch"
    if backend == "triton" and not hopper_or_interpreter(q):
        raise ValueError("the quantized kernel needs a Hopper GPU (compute capability 9.x); use "
                         "block_sparse_attention, or backend='torch' for the quantized reference")
    cfg = config or default_quantized_config(block_size, q.device)
    if block_size % cfg.block_m or block_size % cfg.block_n:
        raise ValueError(f"tile {cfg.block_m}x{cfg.block_n} does not divide block_size {block_size}")
    if cfg.block_n < 32:
        raise ValueError(f"the quantized kernel needs block_n >= 32 (8-bit products), got {cfg.block_n}")
    out, lse = _quantized_attention_op(
        q, k, v, kv_indices, kv_counts, head_pattern, heads, *order_args(order), block_size, scale, return_lse,
        backend, cfg.as_args(), qk_fmt, pv_fmt,
    )
    return (out, lse) if return_lse else out


def quantized_block_sparse_attention_reference(
    q, k, v, kv_indices, kv_counts, *, block_size=128, scale=None, return_lse=False, order=None,
    reordered_heads=None, head_pattern=None, precision="int8", pv_precision=None, block_n=64,
):
    """Plain PyTorch quantized block-sparse attention: `quantize_qkv_reference`, then
    `attend_quantized_reference`; the kernel's arithmetic with `block_n`-key tiles."""
    config = KernelConfig(min(128, block_size), block_n)
    return quantized_block_sparse_attention(
        q, k, v, kv_indices, kv_counts, block_size=block_size, scale=scale, return_lse=return_lse, backend="torch",
        order=order, reordered_heads=reordered_heads, head_pattern=head_pattern, precision=precision,
        pv_precision=pv_precision, config=config,
    )


@torch.library.custom_op("dit_sparse::quantized_block_sparse_attention", mutates_args=(), tags=OP_TAGS)
def _quantized_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_indices: torch.Tensor, kv_counts: torch.Tensor,
    head_pattern: torch.Tensor | None, reordered_heads: torch.Tensor | None, frames: int, positions: int,
    text_len: int, text_position: str, block_size: int, scale: float | None, return_lse: bool, backend: str,
    config: list[int], precision: str, pv_precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantized_block_sparse_attention` as an operator (opaque to torch.compile), for checked
    inputs; arguments as `dit_sparse::block_sparse_attention`'s, with the config always given
    and the two formats. Returns (output, lse); lse is empty without `return_lse`."""
    tables = _tables(q, kv_indices, kv_counts, head_pattern, block_size)
    order = order_from_args(frames, positions, text_len, text_position) if reordered_heads is not None else None
    cfg = KernelConfig.from_args(config)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if use_triton(backend, q):
        qz = quantize_qkv(q, k, v, block_n=cfg.block_n, precision=precision, pv_precision=pv_precision,
                          order=order, reordered_heads=reordered_heads)
        return _attend_quantized_triton(qz, q, tables, block_size, scale, order, reordered_heads, return_lse, cfg)
    qz = quantize_qkv_reference(q, k, v, block_n=cfg.block_n, precision=precision, pv_precision=pv_precision,
                                order=order, reordered_heads=reordered_heads)
    out, lse = attend_quantized_reference(qz, tables, block_size, scale)
    if order is not None:
        out = reorder_tokens_reference(out, order, reordered_heads, inverse=True)
        lse = reorder_tokens_reference(lse[..., None], order, reordered_heads, inverse=True)[..., 0]
    return _output_like(q).copy_(out), lse if return_lse else q.new_empty(0, dtype=torch.float32)


@_quantized_attention_op.register_fake
def _(q, k, v, kv_indices, kv_counts, head_pattern, reordered_heads, frames, positions, text_len, text_position,
      block_size, scale, return_lse, backend, config, precision, pv_precision):
    B, H, S, _ = q.shape
    return _output_like(q), q.new_empty((B, H, S) if return_lse else (0,), dtype=torch.float32)


def attend_quantized_reference(qz: QuantizedQKV, tables: _Tables, block_size: int, scale: float):
    """Output (B, H, S, D) float32 and lse (B, H, S) of the kernel's arithmetic on quantized
    tensors, in attention order: scores of the 8-bit q and k (exact integer sums for int8),
    per-(row, key tile) maxima, P rounded to the P·V format against them, tiles weighted by
    2**(tile max - row max) and the value tile's scale. A chunk of query rows at a time."""
    q8, k8 = qz.q.float(), qz.k.float()
    B, H, S, dp = q8.shape
    bn, nt = qz.block_n, cdiv(S, qz.block_n)
    idx, cnt = tables.dense()
    nb = cdiv(S, block_size)
    mask = _block_mask(idx, cnt, nb)
    key_scale = qz.k_scale.repeat_interleave(bn, -1)[..., :S]
    v8 = qz.v_t[..., :S].float().transpose(-1, -2)
    limit = LIMITS[qz.pv_format]
    out = torch.empty(B, H, S, qz.head_dim, dtype=torch.float32, device=q8.device)
    lse = torch.empty(B, H, S, dtype=torch.float32, device=q8.device)
    rows_per_chunk = max(block_size, (1 << 24) // max(1, B * H * nt * bn) // block_size * block_size)
    for r0 in range(0, S, rows_per_chunk):
        r1 = min(S, r0 + rows_per_chunk)
        row_scale = qz.q_scale[:, :, r0:r1] * (scale * LOG2E)
        x = (q8[:, :, r0:r1] @ k8.transpose(-1, -2)) * (row_scale[..., None] * key_scale[:, :, None, :])
        m = mask[:, :, r0 // block_size : cdiv(r1, block_size)]
        m = m.repeat_interleave(block_size, 2)[:, :, : r1 - r0].repeat_interleave(block_size, 3)[..., :S]
        x = torch.nn.functional.pad(x.masked_fill(~m, float("-inf")), (0, nt * bn - S), value=float("-inf"))
        x = x.unflatten(-1, (nt, bn))
        tile_max = x.amax(-1)
        row_max = tile_max.amax(-1, keepdim=True)
        ref = torch.maximum(tile_max, row_max - TAIL_GAP)
        ref = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref))  # rows with no key at all
        p = torch.exp2(x - (ref - math.log2(limit))[..., None])
        weight = torch.exp2(ref - row_max.nan_to_num(neginf=0.0))
        row_sum = (p.sum(-1) * weight).sum(-1)
        pq = p.round() if qz.pv_format == "int8" else p.to(torch.float8_e4m3fn).float()
        pq = (pq * (weight * qz.v_scale[:, :, None, :])[..., None]).flatten(-2)[..., :S]
        nonempty = row_sum > 0
        safe = torch.where(nonempty, row_sum, torch.ones_like(row_sum))
        o = (pq @ v8) / safe[..., None] + qz.v_mean[:, :, None, :]
        out[:, :, r0:r1] = torch.where(nonempty[..., None], o, torch.zeros_like(o))[..., : qz.head_dim]
        shift = (q8[:, :, r0:r1] @ qz.k_mean[..., None])[..., 0] * row_scale  # the scores k's smoothing took off
        lse[:, :, r0:r1] = torch.where(nonempty, (row_max[..., 0] + torch.log2(safe) - math.log2(limit) + shift) / LOG2E,
                                       torch.full_like(safe, float("-inf")))
    return out, lse


@triton.jit
def _exact_float(x):
    """int32 -> float32 for |x| < 2**22 through the integer and float adders (the conversion
    instruction runs at a quarter of their rate on Hopper)."""
    return (x + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def _quantized_step(q, k, vt, row_scale, v_scale, m_i, l_i, acc, cols, S, is_tail,
                    QK_INT8: tl.constexpr, PV_INT8: tl.constexpr, LOG2_LIMIT: tl.constexpr,
                    ROUND_FIRST: tl.constexpr):
    """One key tile: 8-bit Q·Kᵀ dequantized by `row_scale` (q's scale times the k tile's, in
    log2 units), P rounded against the tile's row max, 8-bit P·V added to the float32
    accumulator with the factor 2**(tile max - running max) times the v tile's scale."""
    qk = tl.dot(q, tl.trans(k))
    if QK_INT8:
        qk = _exact_float(qk)
    if is_tail:
        qk = tl.where((cols < S)[None, :], qk, float("-inf"))
    x = qk * row_scale[:, None]
    tile_max = tl.max(x, 1)
    m_new = tl.maximum(m_i, tile_max)
    ref = tl.maximum(tile_max, m_new - 64.0)
    p = tl.math.exp2(x - (ref - LOG2_LIMIT)[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    weight = tl.math.exp2(ref - m_new)
    l_i = l_i * alpha + tl.sum(p, 1) * weight
    if PV_INT8:
        p8 = (p + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)
        pv = _exact_float(tl.dot(p8, tl.trans(vt)))
    else:
        pv = tl.dot(to_fp8(p, ROUND_FIRST), tl.trans(vt))
    return m_new, l_i, acc * alpha[:, None] + pv * (weight * v_scale)[:, None]


@triton.jit
def _qbsa_fwd_kernel(
    O, q_desc, k_desc, v_desc, QS, KS, VS, VM, KM, LSE, IDX, CNT, RH, TMPL,
    sob, soh, sos, sib, sih, sim, sin_, scb, sch, scm, srb, srh, stb, sth, sit, sct, NT,
    H, S, NB, NKT, qk_scale,
    VSTART, FRAMES, POSITIONS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, REORDER: tl.constexpr, RETURN_LSE: tl.constexpr, HAS_TEMPLATES: tl.constexpr,
    RESIDENT, ROTATE: tl.constexpr, QK_INT8: tl.constexpr, PV_INT8: tl.constexpr, LOG2_LIMIT: tl.constexpr,
    ROUND_FIRST: tl.constexpr,
):
    """Tiles of the quantized tensors (attention order) move by TMA; the output is stored through
    the position-major index map for heads flagged in RH, in place for the others."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    b, h, b64, h64, idx_row, count, rows = _program_query_tile(IDX, CNT, TMPL, H, sib, sih, sim, scb, sch, scm, stb, sth,
                                                               sit, sct, NT, BLOCK_M, BLOCK_SIZE, HAS_TEMPLATES)
    row_ok = rows < S
    q = q_desc.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
    q_scale = tl.load(QS + bh * S + rows, mask=row_ok, other=1.0) * qk_scale
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    n = count * SUB
    first = _first_tile(count, pid_m, pid_bh, RESIDENT, SUB, ROTATE)
    for j in range(0, n):
        start, is_tail = _key_tile_start(idx_row, j, first, n, sin_, NB, SUB, BLOCK_SIZE, BLOCK_N)
        k = k_desc.load([b, h, start, 0]).reshape(BLOCK_N, BLOCK_D)
        vt = v_desc.load([b, h, 0, start]).reshape(BLOCK_D, BLOCK_N)
        tile = bh * NKT + tl.minimum(start // BLOCK_N, NKT - 1)  # a tile past the end holds no key
        m_i, l_i, acc = _quantized_step(q, k, vt, q_scale * tl.load(KS + tile), tl.load(VS + tile), m_i, l_i, acc,
                                        start + offs_n, S, is_tail, QK_INT8, PV_INT8, LOG2_LIMIT, ROUND_FIRST)
    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    offs_d = tl.arange(0, BLOCK_D)
    v_mean = tl.load(VM + bh * BLOCK_D + offs_d)
    out = tl.where(nonempty[:, None], acc / l_safe[:, None] + v_mean[None, :], 0.0)
    out_rows = rows
    if REORDER:
        out_rows = native_rows(rows, tl.load(RH + b64 * srb + h64 * srh), VSTART, FRAMES, POSITIONS)
    out_rows = tl.minimum(out_rows, S - 1).to(tl.int64)
    tl.store(O + b64 * sob + h64 * soh + out_rows[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
    if RETURN_LSE:
        shift = tl.sum(q.to(tl.float32) * tl.load(KM + bh * BLOCK_D + offs_d)[None, :], 1) * q_scale  # k's smoothing
        lse = tl.where(nonempty, (m_i + tl.math.log2(l_safe) - LOG2_LIMIT + shift) * 0.6931471805599453,
                       float("-inf"))
        tl.store(LSE + bh * S + out_rows, lse, mask=row_ok)


def _attend_quantized_triton(qz: QuantizedQKV, q, tables: _Tables, block_size, scale, order, heads, return_lse,
                             cfg: KernelConfig):
    """One launch of the quantized kernel on `quantize_qkv`'s tensors; (output, lse)."""
    table_strides, template_strides = tables.strides()
    B, H, S, D = q.shape
    dp, bn = qz.q.shape[-1], qz.block_n
    out = _output_like(q)
    lse = torch.empty(B, H, S, dtype=torch.float32, device=q.device) if return_lse else qz.q_scale  # never written
    descs = (
        TensorDescriptor.from_tensor(qz.q, [1, 1, cfg.block_m, dp]),
        TensorDescriptor.from_tensor(qz.k, [1, 1, bn, dp]),
        TensorDescriptor(qz.v_t, [B, H, dp, S], list(qz.v_t.stride()), [1, 1, dp, bn]),
    )
    tmpl = tables.template_arg()
    rh = heads if heads is not None else tmpl  # never read without reordering
    o = order or TokenOrder(1, 1)
    _qbsa_fwd_kernel[(cdiv(S, cfg.block_m), B * H)](
        out, *descs, qz.q_scale, qz.k_scale, qz.v_scale, qz.v_mean, qz.k_mean, lse, tables.idx, tables.cnt, rh, tmpl,
        *out.stride()[:3], *table_strides, rh.stride(0), rh.stride(1), *template_strides,
        H, S, cdiv(S, block_size), qz.k_scale.shape[-1], scale * LOG2E,
        o.video_start, o.frames, o.positions,
        D=D, BLOCK_D=dp, BLOCK_M=cfg.block_m, BLOCK_N=bn, BLOCK_SIZE=block_size, REORDER=heads is not None,
        RETURN_LSE=return_lse, HAS_TEMPLATES=tables.tmpl is not None, RESIDENT=max(1, cfg.resident_programs),
        ROTATE=cfg.resident_programs > 1, QK_INT8=qz.qk_format == "int8", PV_INT8=qz.pv_format == "int8",
        LOG2_LIMIT=math.log2(LIMITS[qz.pv_format]), ROUND_FIRST=interpreting(), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse if return_lse else q.new_empty(0, dtype=torch.float32)
