"""8-bit q, k, v for the quantized block-sparse attention, in one Triton pass, and its reference.

The recipe is SageAttention's (smoothing, per-block scales), with every scale local to a tile
so that the pass needs no reduction over the sequence besides the smoothing means:

- q: one scale per token (its row's max |x| over the head dim);
- k: minus its per-head mean over tokens (any vector shared by every key leaves softmax
  unchanged, so the mean is estimated on every `MEAN_STRIDE`-th token), then one scale per tile
  of `block_n` keys, the kernel's key tile;
- v: minus its per-head mean (the kernel adds it back to the output, as softmax rows sum to
  one), then one scale per tile of `block_n` keys, stored transposed as (B, H, D, S) so that the
  P·V product reads it K-major, as 8-bit tensor-core products need.

Formats: "int8" (symmetric, rounded to nearest even, in [-127, 127]) or "fp8" (e4m3, in
[-448, 448]); q and k take the Q·Kᵀ format, v the P·V one. The head dim is zero-padded to a
power of two >= 32. Everything is in attention order: heads flagged in `heads` are written
position-major (the reordering pass of the bf16 path, fused into this one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reorder import TokenOrder, _head_mask, native_rows, reorder_tokens_reference
from .utils import cdiv, interpreting, next_power_of_2

FORMATS = ("int8", "fp8")
LIMITS = {"int8": 127.0, "fp8": 448.0}
"""Largest magnitude of each format: a block's max |x| maps to it."""
TORCH_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
MEAN_STRIDE = 8
"""The smoothing means of k and v are taken over every MEAN_STRIDE-th token."""
ROUNDING_MAGIC = 12582912.0
"""1.5 * 2**23: adding it to a float of magnitude < 2**22 rounds it to an integer (to nearest
even), which is then the low bits of the sum's bit pattern."""


@dataclass(frozen=True)
class QuantizedQKV:
    """q, k, v of (B, H, S, D) attention in 8 bits, in attention order, with their scales."""

    q: torch.Tensor  # (B, H, S, Dp), the Q·Kᵀ format
    k: torch.Tensor  # (B, H, S, Dp), smoothed
    v_t: torch.Tensor  # (B, H, Dp, Sp) (Sp: S rounded up to 16), the P·V format, minus v_mean
    q_scale: torch.Tensor  # (B, H, S) float32
    k_scale: torch.Tensor  # (B, H, ceil(S / block_n)) float32
    v_scale: torch.Tensor  # (B, H, ceil(S / block_n)) float32
    v_mean: torch.Tensor  # (B, H, Dp) float32, zero past D
    k_mean: torch.Tensor  # (B, H, Dp) float32, zero past D (the kernel's lse adds q·k_mean back)
    head_dim: int  # D
    block_n: int
    qk_format: str
    pv_format: str


def padded_head_dim(d: int) -> int:
    """The head dim of the quantized tensors: a power of two >= 32 (8-bit tensor-core products
    take at least 32 along the reduced dim)."""
    return max(32, next_power_of_2(d))


def check_formats(precision: str, pv_precision: str | None = None) -> tuple[str, str]:
    """(Q·Kᵀ format, P·V format) of a precision and its optional P·V override."""
    pv_precision = pv_precision or precision
    for name, value in (("precision", precision), ("pv_precision", pv_precision)):
        if value not in FORMATS:
            raise ValueError(f"{name} must be one of {FORMATS}, got {value!r}")
    return precision, pv_precision


def smoothing_means(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, D) float32 means of k and v over every MEAN_STRIDE-th token (native order), the
    same on both paths (a strided read: 1/MEAN_STRIDE of the bytes)."""
    return (x[:, :, ::MEAN_STRIDE].mean(2, dtype=torch.float32) for x in (k, v))


def _quantize_rows(x: torch.Tensor, amax: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32) scaled by LIMIT / amax (amax broadcast to x) and rounded to `fmt`; and the
    scales amax / LIMIT (1 where amax is 0)."""
    limit = torch.full_like(amax, LIMITS[fmt])  # tensor / tensor: an IEEE division, as the kernel's
    nonzero = amax > 0
    inv = torch.where(nonzero, limit / amax, torch.ones_like(amax))
    y = (x * inv).clamp(-LIMITS[fmt], LIMITS[fmt])
    y = y.round().to(torch.int8) if fmt == "int8" else y.to(torch.float8_e4m3fn)
    return y, torch.where(nonzero, amax / limit, torch.ones_like(amax))


def quantize_qkv_reference(q, k, v, *, block_n: int = 64, precision: str = "int8", pv_precision: str | None = None,
                           order: TokenOrder | None = None, reordered_heads=None) -> QuantizedQKV:
    """PyTorch reference of `quantize_qkv`: the same arithmetic, so the same bits."""
    qk_fmt, pv_fmt = check_formats(precision, pv_precision)
    B, H, S, D = q.shape
    dp, nt = padded_head_dim(D), cdiv(S, block_n)
    k_mean, v_mean = smoothing_means(k, v)
    if order is not None:
        heads = _head_mask(reordered_heads, B, H, q.device)
        q, k, v = (reorder_tokens_reference(t, order, heads) for t in (q, k, v))

    def padded(x, mean=None):
        x = x.float() if mean is None else x.float() - mean[:, :, None]
        return torch.nn.functional.pad(x, (0, dp - D, 0, nt * block_n - S))

    q8, q_scale = _quantize_rows(padded(q), padded(q).abs().amax(-1, keepdim=True), qk_fmt)
    tiles = {}
    for name, x, mean, fmt in (("k", k, k_mean, qk_fmt), ("v", v, v_mean, pv_fmt)):
        x = padded(x, mean)
        x[:, :, S:] = 0  # rows past S are no keys
        x = x.view(B, H, nt, block_n, dp)
        tiles[name] = _quantize_rows(x, x.abs().amax((-1, -2), keepdim=True), fmt)
    (k8, k_scale), (v8, v_scale) = tiles["k"], tiles["v"]
    v_t = torch.zeros(B, H, dp, cdiv(S, 16) * 16, dtype=v8.dtype, device=q.device)
    v_t[..., :S] = v8.view(B, H, -1, dp)[:, :, :S].transpose(-1, -2)
    return QuantizedQKV(
        q8[:, :, :S].contiguous(), k8.view(B, H, -1, dp)[:, :, :S].contiguous(), v_t,
        q_scale[:, :, :S, 0].contiguous(), k_scale.view(B, H, nt), v_scale.view(B, H, nt),
        *(torch.nn.functional.pad(m, (0, dp - D)) for m in (v_mean, k_mean)), D, block_n, qk_fmt, pv_fmt,
    )


@triton.jit
def to_fp8(x, ROUND_FIRST: tl.constexpr):
    """x (float32, |x| <= 448) as fp8 e4m3, rounded to nearest even. With ROUND_FIRST the
    rounding is done in float32 arithmetic first, so the conversion is exact: Triton's
    interpreter (3.9) converts values whose rounding carries into the exponent wrongly (124.3 ->
    64 instead of 128); on the GPU the conversion instruction rounds right by itself."""
    if ROUND_FIRST:
        bits = x.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
        subnormal = (x + 24576.0) - 24576.0  # multiples of 2**-9 below 2**-6
        x = tl.where(tl.abs(x) < 0.015625, subnormal, normal)
    return x.to(tl.float8e4nv)


@triton.jit
def _to_format(x, LIMIT: tl.constexpr, INT8: tl.constexpr, ROUND_FIRST: tl.constexpr):
    """x (float32, already scaled) clamped to the format's range and rounded to it (int8: to
    nearest even, through the float adder)."""
    x = tl.minimum(tl.maximum(x, -LIMIT), LIMIT)
    if INT8:
        y = (x + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)
    else:
        y = to_fp8(x, ROUND_FIRST)
    return y


@triton.jit
def _scaled(x, amax, LIMIT: tl.constexpr, INT8: tl.constexpr, ROUND_FIRST: tl.constexpr):
    """x quantized with scale amax / LIMIT (amax broadcasts to x), and that scale."""
    nonzero = amax > 0
    inv = tl.where(nonzero, LIMIT / tl.where(nonzero, amax, 1.0), 1.0)
    return _to_format(x * inv, LIMIT, INT8, ROUND_FIRST), tl.where(nonzero, amax / LIMIT, 1.0)


@triton.jit
def _quantize_kernel(
    Q, K, V, KM, VM, Q8, K8, V8, QS, KS, VS, RH,
    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, srb, srh,
    H, S, NT, SP, VSTART, FRAMES, POSITIONS,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, REORDER: tl.constexpr,
    QK_LIMIT: tl.constexpr, QK_INT8: tl.constexpr, PV_LIMIT: tl.constexpr, PV_INT8: tl.constexpr,
    ROUND_FIRST: tl.constexpr,
):
    """One tile of BLOCK_N tokens (attention order) of one head: its q rows, k tile and v tile."""
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = t * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < S
    src = rows
    if REORDER:
        src = native_rows(rows, tl.load(RH + b * srb + h * srh), VSTART, FRAMES, POSITIONS)
    src = tl.minimum(src, S - 1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    ok = row_ok[:, None] & (cols < D)[None, :]
    bh = pid_bh.to(tl.int64)
    out_rows = bh * S + rows.to(tl.int64)

    x = tl.load(Q + b * sqb + h * sqh + src[:, None] * sqs + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    x8, scale = _scaled(x, tl.max(tl.abs(x), 1)[:, None], QK_LIMIT, QK_INT8, ROUND_FIRST)
    tl.store(Q8 + out_rows[:, None] * BLOCK_D + cols[None, :], x8, mask=row_ok[:, None])
    tl.store(QS + out_rows, tl.reshape(scale, [BLOCK_N]), mask=row_ok)

    mean = tl.load(KM + bh * D + cols, mask=cols < D, other=0.0)
    x = tl.load(K + b * skb + h * skh + src[:, None] * sks + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    x = tl.where(ok, x - mean[None, :], 0.0)
    x8, scale = _scaled(x, tl.max(tl.max(tl.abs(x), 1), 0), QK_LIMIT, QK_INT8, ROUND_FIRST)
    tl.store(K8 + out_rows[:, None] * BLOCK_D + cols[None, :], x8, mask=row_ok[:, None])
    tl.store(KS + bh * NT + t, scale)

    mean = tl.load(VM + bh * D + cols, mask=cols < D, other=0.0)
    x = tl.load(V + b * svb + h * svh + src[:, None] * svs + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    x = tl.where(ok, x - mean[None, :], 0.0)
    x8, scale = _scaled(x, tl.max(tl.max(tl.abs(x), 1), 0), PV_LIMIT, PV_INT8, ROUND_FIRST)
    tl.store(V8 + bh * BLOCK_D * SP + cols[None, :] * SP + rows[:, None], x8, mask=row_ok[:, None])
    tl.store(VS + bh * NT + t, scale)


def quantize_qkv(q, k, v, *, block_n: int = 64, precision: str = "int8", pv_precision: str | None = None,
                 order: TokenOrder | None = None, reordered_heads=None) -> QuantizedQKV:
    """q, k, v (B, H, S, D; any strides with a contiguous head dim) in 8 bits, in attention
    order, in one Triton pass (plus the two strided means). Formats: `precision` for q and k,
    `pv_precision` (default: the same) for v. `block_n`: the attention kernel's key tile, the
    granularity of the k and v scales. Triton only (CUDA, or the interpreter)."""
    qk_fmt, pv_fmt = check_formats(precision, pv_precision)
    B, H, S, D = q.shape
    dp, nt = padded_head_dim(D), cdiv(S, block_n)
    k_mean, v_mean = smoothing_means(k, v)
    heads = None if order is None else _head_mask(reordered_heads, B, H, q.device)
    dev = q.device
    q8 = torch.empty(B, H, S, dp, dtype=TORCH_DTYPES[qk_fmt], device=dev)
    k8 = torch.empty_like(q8)
    sp = cdiv(S, 16) * 16
    v_t = torch.empty(B, H, dp, sp, dtype=TORCH_DTYPES[pv_fmt], device=dev)
    q_scale = torch.empty(B, H, S, dtype=torch.float32, device=dev)
    k_scale = torch.empty(B, H, nt, dtype=torch.float32, device=dev)
    v_scale = torch.empty_like(k_scale)
    rh = heads if heads is not None else q_scale  # never read without reordering
    o = order or TokenOrder(1, 1)
    _quantize_kernel[(nt, B * H)](
        q, k, v, k_mean, v_mean, q8, k8, v_t, q_scale, k_scale, v_scale, rh,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], rh.stride(0), rh.stride(1),
        H, S, nt, sp, o.video_start, o.frames, o.positions,
        D=D, BLOCK_D=dp, BLOCK_N=block_n, REORDER=heads is not None,
        QK_LIMIT=LIMITS[qk_fmt], QK_INT8=qk_fmt == "int8", PV_LIMIT=LIMITS[pv_fmt], PV_INT8=pv_fmt == "int8",
        ROUND_FIRST=interpreting(), num_warps=4,
    )
    return QuantizedQKV(q8, k8, v_t, q_scale, k_scale, v_scale,
                        *(torch.nn.functional.pad(m, (0, dp - D)) for m in (v_mean, k_mean)), D, block_n, qk_fmt, pv_fmt)
