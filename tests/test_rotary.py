"""The Triton interleaved rotary (under TRITON_INTERPRET=1) against its reference, which is
diffusers' own Wan rotary: equal bit for bit, on odd shapes, strided views and broadcast tables."""

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from dit_sparse.kernels import interleaved_rotary, interleaved_rotary_reference
from dit_sparse.kernels.utils import interpreting


def wan_tables(frames, height, width, head_dim):
    """Wan's own (1, S, 1, D) float32 cos/sin tables for a latent grid (patch size 1)."""
    rope = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=64)
    return rope(torch.zeros(1, 1, frames, height, width))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_equals_reference_bit_for_bit(dtype):
    cos, sin = wan_tables(3, 5, 7, 24)  # 105 tokens: partial token and pair tiles
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 105, 11, 24, generator=gen).to(dtype) for _ in range(2))
    got = interleaved_rotary(q, k, cos, sin, backend="triton")
    for out, x in zip(got, (q, k), strict=True):
        expected = interleaved_rotary_reference(x, cos, sin)
        assert out.dtype == dtype and out.shape == x.shape
        if dtype == torch.bfloat16 and interpreting():
            # the interpreter truncates float32 to bfloat16 where the GPU rounds to nearest even:
            # one bfloat16 step apart at most here (bench_rotary.py checks the GPU bit for bit)
            torch.testing.assert_close(out, expected, atol=0, rtol=2.0 ** -7)
        else:
            assert torch.equal(out, expected)


def test_strided_views_and_per_item_tables():
    cos, sin = wan_tables(2, 3, 5, 16)
    cos, sin = torch.cat([cos, cos.flip(1)]), torch.cat([sin, sin.flip(1)])  # (2, S, 1, D): one table per item
    gen = torch.Generator().manual_seed(1)
    fused = torch.randn(2, 30, 3 * 4 * 16, generator=gen)  # q, k, v side by side, as one projection
    q, k = (fused[..., i * 64:(i + 1) * 64].unflatten(2, (4, 16)) for i in range(2))
    assert not q.is_contiguous()
    got_q, got_k = interleaved_rotary(q, k, cos, sin, backend="triton")
    assert torch.equal(got_q, interleaved_rotary_reference(q, cos, sin))
    assert torch.equal(got_k, interleaved_rotary_reference(k, cos, sin))


def test_rotation_keeps_pair_norms_and_torch_backend_is_the_reference():
    cos, sin = wan_tables(2, 2, 2, 8)
    q, k = torch.randn(1, 8, 2, 8), torch.randn(1, 8, 2, 8)
    out_q, out_k = interleaved_rotary(q, k, cos, sin, backend="torch")
    torch.testing.assert_close(out_q.unflatten(-1, (-1, 2)).norm(dim=-1), q.unflatten(-1, (-1, 2)).norm(dim=-1))
    assert torch.equal(out_k, interleaved_rotary_reference(k, cos, sin))
    assert not torch.equal(out_q, q)  # token 0 has angle 0, the others rotate


def test_bad_shapes_are_clear_errors():
    cos, sin = wan_tables(2, 2, 2, 8)
    q = torch.randn(1, 8, 2, 8)
    with pytest.raises(ValueError, match="one shape"):
        interleaved_rotary(q, q[:, :4], cos, sin)
    with pytest.raises(ValueError, match=r"cos must be \(1 or 1, 8, 1, 8\)"):
        interleaved_rotary(q, q, cos[:, :4], sin)
    with pytest.raises(ValueError, match="must be even"):
        interleaved_rotary(q[..., :7], q[..., :7], cos[..., :7], sin[..., :7])
    with pytest.raises(ValueError, match="backend must be one of"):
        interleaved_rotary(q, q, cos, sin, backend="cuda")
    with pytest.raises(ValueError, match="unsupported dtypes for the Triton rotary"):
        interleaved_rotary(q, q, cos.double(), sin.double(), backend="triton")


def test_auto_takes_the_reference_for_dtypes_triton_lacks():
    cos, sin = wan_tables(2, 2, 2, 8)
    q = torch.randn(1, 8, 2, 8)
    out, _ = interleaved_rotary(q, q, cos.double(), sin.double())
    assert out.dtype == q.dtype and torch.equal(out, interleaved_rotary_reference(q, cos.double(), sin.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_diffusers_convention_is_apply_rotary_emb(dtype):
    """convention="diffusers" is diffusers' apply_rotary_emb (HunyuanVideo, Flux, CogVideoX), with
    tables whose pair members differ (so no entry may stand in for its neighbour)."""
    gen = torch.Generator().manual_seed(2)
    S, D = 70, 24
    angles = torch.rand(S, D, generator=gen) * 6.0
    cos, sin = angles.cos(), angles.sin()
    q, k = (torch.randn(2, S, 5, D, generator=gen).to(dtype) for _ in range(2))
    tables = (cos[None, :, None], sin[None, :, None])
    for x in (q, k):
        expected = apply_rotary_emb(x, (cos, sin), sequence_dim=1)
        assert torch.equal(interleaved_rotary_reference(x, *tables, convention="diffusers"), expected)
    got = interleaved_rotary(q, k, *tables, convention="diffusers", backend="triton")
    for out, x in zip(got, (q, k), strict=True):
        expected = apply_rotary_emb(x, (cos, sin), sequence_dim=1)
        if dtype == torch.bfloat16 and interpreting():  # see test_triton_equals_reference_bit_for_bit
            torch.testing.assert_close(out, expected, atol=0, rtol=2.0 ** -7)
        else:
            assert torch.equal(out, expected)
    wan = interleaved_rotary(q, k, *tables, convention="wan", backend="torch")[0]
    assert not torch.equal(wan, got[0])  # the conventions differ on such tables
    with pytest.raises(ValueError, match="convention must be one of"):
        interleaved_rotary(q, k, *tables, convention="flux")
