"""Rotary embedding on interleaved pairs, of queries and keys in one pass.

Wan's attention rotates each pair (x[2i], x[2i+1]) of a head by the token's angle, with
cos = cos[..., 2i] and sin = sin[..., 2i+1] of its (1, S, 1, D) float32 tables. diffusers does
that with eight PyTorch ops per tensor (strided reads, products, strided writes); for Wan 1.3B at
480p they take 1.7 ms a call on an H200, almost half the time of the sparse attention call they
feed. The Triton kernel reads q, k and the tables once and writes both outputs (0.24 ms), with
the same float32 arithmetic, rounded as PyTorch rounds it (no fused multiply-add), so its
output equals the reference's bit for bit (docs/results/rotary_h200.md).

HunyuanVideo (and Flux, CogVideoX) rotate the same pairs through diffusers' `apply_rotary_emb`
(`use_real=True`, `use_real_unbind_dim=-1`), which takes the even pair member's angle from
cos[2i], sin[2i] and the odd one's from cos[2i+1], sin[2i+1], in float32 whatever the input
dtype: `convention="diffusers"` reproduces that, bit for bit as well.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import OP_TAGS, cdiv, check_backend, use_triton

BLOCK_TOKENS = 8
BLOCK_PAIRS = 128

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_TRITON_DTYPES = tuple(_TL_DTYPES)
CONVENTIONS = ("wan", "diffusers")


def interleaved_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                 convention: str = "wan") -> torch.Tensor:
    """x (B, S, H, D) rotated pairwise as diffusers' WanAttnProcessor does it ("wan"), or as its
    `apply_rotary_emb(x, (cos, sin), sequence_dim=1)` does it ("diffusers"; tables broadcast as
    (1 or B, S, 1, D) here). The output is contiguous whatever x's strides, as the kernel's is."""
    if convention == "diffusers":
        x_real, x_imag = x.unflatten(-1, (-1, 2)).unbind(-1)
        x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
        return (x.float() * cos + x_rotated.float() * sin).to(x.dtype).contiguous()
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


@triton.jit
def _rounded(x, COMPUTE: tl.constexpr):
    """x as PyTorch holds an intermediate result of the compute dtype (rounded to it)."""
    return x.to(COMPUTE).to(tl.float32)


@triton.jit
def _pairs(ptr, offsets, mask, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, COMPUTE: tl.constexpr):
    """A (BLOCK_T, 2 * BLOCK_P) tile loaded whole (vector loads) and split into its even and
    odd columns, as float32 values of the compute dtype."""
    x = tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE).to(tl.float32)
    return tl.split(tl.reshape(x, (BLOCK_T, BLOCK_P, 2)))


@triton.jit
def _rotate(x_ptr, o_ptr, x_off, o_off, c_even, s_even, c_odd, s_odd, mask,
            BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, COMPUTE: tl.constexpr):
    """even = a cos - b sin, odd = a sin + b cos for each pair (a, b), each product and sum
    rounded to the compute dtype (IEEE addition commutes and a + (-p) equals a - p, so this is
    also diffusers' x * cos + rotated(x) * sin)."""
    a, b = _pairs(x_ptr, x_off, mask, BLOCK_T, BLOCK_P, COMPUTE)
    even = _rounded(_rounded(a * c_even, COMPUTE) - _rounded(b * s_even, COMPUTE), COMPUTE)
    odd = _rounded(_rounded(a * s_odd, COMPUTE) + _rounded(b * c_odd, COMPUTE), COMPUTE)
    out = tl.reshape(tl.join(even, odd), (BLOCK_T, 2 * BLOCK_P))
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interleaved_rotary_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
    S, WIDTH, D,
    q_sb, q_ss, q_sh, k_sb, k_ss, k_sh, o_sb, o_ss, o_sh, c_sb, c_ss, s_sb, s_ss,
    COMPUTE: tl.constexpr, WAN: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One (BLOCK_T tokens x 2 * BLOCK_P values) tile of batch item b; values run over heads x D
    (WIDTH = H * D), a tile holds whole pairs since D is even. WAN: both pair members take
    cos[2i] and sin[2i + 1]; else each its own entries."""
    b = tl.program_id(2).to(tl.int64)
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    columns = tl.program_id(1) * 2 * BLOCK_P + tl.arange(0, 2 * BLOCK_P)
    mask = (tokens < S)[:, None] & (columns < WIDTH)[None, :]
    t = tokens.to(tl.int64)[:, None]
    head = (columns // D).to(tl.int64)[None, :]
    dim = (columns % D).to(tl.int64)[None, :]
    c_even, c_odd = _pairs(cos_ptr, b * c_sb + t * c_ss + dim, mask, BLOCK_T, BLOCK_P, COMPUTE)
    s_even, s_odd = _pairs(sin_ptr, b * s_sb + t * s_ss + dim, mask, BLOCK_T, BLOCK_P, COMPUTE)
    if WAN:
        c_odd = c_even
        s_even = s_odd
    o_off = b * o_sb + t * o_ss + head * o_sh + dim
    _rotate(q_ptr, qo_ptr, b * q_sb + t * q_ss + head * q_sh + dim, o_off, c_even, s_even, c_odd, s_odd, mask,
            BLOCK_T, BLOCK_P, COMPUTE)
    _rotate(k_ptr, ko_ptr, b * k_sb + t * k_ss + head * k_sh + dim, o_off, c_even, s_even, c_odd, s_odd, mask,
            BLOCK_T, BLOCK_P, COMPUTE)


def _check(q, k, cos, sin):
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must be (B, S, H, D) tensors of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, S, _, D = q.shape
    if D % 2:
        raise ValueError(f"the head dimension must be even for pairwise rotation, got {D}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dim() != 4 or table.shape[0] not in (1, B) or table.shape[1] != S or table.shape[2] != 1 \
                or table.shape[3] != D:
            raise ValueError(f"{name} must be (1 or {B}, {S}, 1, {D}) to match q, got {tuple(table.shape)}")


def _compute_dtype(q: torch.Tensor, cos: torch.Tensor, convention: str) -> torch.dtype:
    """Wan computes in the promoted dtype of x and the tables, diffusers' helper in float32 at least."""
    return torch.promote_types(torch.float32 if convention == "diffusers" else q.dtype, cos.dtype)


def _rotary_backend(q, k, cos, sin, convention: str, backend: str) -> str:
    """"triton" or "torch" for `backend`: "auto" takes Triton on CUDA for the dtypes it supports."""
    supported = (q.dtype in _TRITON_DTYPES and k.dtype == q.dtype and sin.dtype == cos.dtype
                 and _compute_dtype(q, cos, convention) in _TRITON_DTYPES)
    if backend == "triton" and not supported:
        raise ValueError(f"unsupported dtypes for the Triton rotary: q {q.dtype}, k {k.dtype}, cos {cos.dtype}, "
                         f"sin {sin.dtype}; use backend='torch' or 'auto'")
    return "triton" if supported and use_triton(backend, q) else "torch"


def interleaved_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                       convention: str = "wan", backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """q and k (B, S, H, D) rotated pairwise by (1 or B, S, 1, D) cos/sin tables, as
    `interleaved_rotary_reference` rotates each under `convention` ("wan" or "diffusers"), into
    new contiguous tensors; "auto" runs Triton on CUDA for the dtypes it supports (float32/16,
    bfloat16) and the reference otherwise (e.g. float64 tables). Checks its arguments, then
    calls the op `dit_sparse::interleaved_rotary`."""
    check_backend(backend)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    _check(q, k, cos, sin)
    return _interleaved_rotary_op(q, k, cos, sin, convention, _rotary_backend(q, k, cos, sin, convention, backend))


@torch.library.custom_op("dit_sparse::interleaved_rotary", mutates_args=(), tags=OP_TAGS)
def _interleaved_rotary_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                           convention: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`interleaved_rotary` as an operator (opaque to torch.compile); backend as there."""
    if _rotary_backend(q, k, cos, sin, convention, backend) == "torch":
        return (interleaved_rotary_reference(q, cos, sin, convention),
                interleaved_rotary_reference(k, cos, sin, convention))
    q, k, cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, cos, sin))
    B, S, H, D = q.shape
    q_out, k_out = torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(k, memory_format=torch.contiguous_format)
    grid = (cdiv(S, BLOCK_TOKENS), cdiv(H * D, 2 * BLOCK_PAIRS), B)
    batch_stride = lambda t: 0 if t.shape[0] == 1 else t.stride(0)  # noqa: E731
    _interleaved_rotary_kernel[grid](
        q, k, q_out, k_out, cos, sin, S, H * D, D,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2),
        batch_stride(cos), cos.stride(1), batch_stride(sin), sin.stride(1),
        COMPUTE=_TL_DTYPES[_compute_dtype(q, cos, convention)], WAN=convention == "wan", BLOCK_T=BLOCK_TOKENS,
        BLOCK_P=BLOCK_PAIRS, enable_fp_fusion=False,
    )
    return q_out, k_out


@_interleaved_rotary_op.register_fake
def _(q, k, cos, sin, convention, backend):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))
