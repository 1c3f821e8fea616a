import math

import pytest
import torch

from dit_sparse.kernels import TokenOrder, sampled_block_lse, sampled_block_lse_reference
from dit_sparse.kernels.block_lse import LseConfig


@pytest.mark.parametrize("S,D,N,block_size", [(333, 64, 7, 16), (200, 128, 33, 64), (261, 40, 16, 128)])
@pytest.mark.parametrize("reorder", [False, True])
def test_triton_matches_reference_and_exact_block_sums(S, D, N, block_size, reorder):
    gen = torch.Generator().manual_seed(S + N)
    B, H = 2, 3
    q = torch.randn(B, H, N, D, generator=gen)
    k = torch.randn(B, H, S, D, generator=gen)
    text = 9 if S % 2 else 0
    order = None
    if reorder:
        frames = 4
        order = TokenOrder(frames, (S - text) // frames, S - text - frames * ((S - text) // frames) + text, "suffix")
    out = sampled_block_lse(q, k, block_size=block_size, order=order, backend="triton")
    ref = sampled_block_lse_reference(q, k, block_size=block_size, order=order)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # the definition, by hand: block log-sum-exp of the scaled scores in the chosen order
    layouts = [k] if order is None else [k, k.index_select(2, order.position_major_index())]
    assert ref.shape == (B, H, len(layouts), N, math.ceil(S / block_size))
    nb = math.ceil(S / block_size)
    for layout, keys in enumerate(layouts):
        scores = q @ keys.transpose(-1, -2) / math.sqrt(D)
        for j in (0, nb - 1):
            torch.testing.assert_close(ref[:, :, layout, :, j], scores[..., j * block_size : (j + 1) * block_size].logsumexp(-1))
    # softmax over blocks is the attention mass per block and sums to one
    torch.testing.assert_close(ref.softmax(-1).sum(-1), torch.ones(B, H, len(layouts), N))


def test_shape_errors():
    q, k = torch.randn(1, 2, 4, 16), torch.randn(1, 3, 50, 16)
    with pytest.raises(ValueError, match="same B, H, D"):
        sampled_block_lse(q, k)
    with pytest.raises(ValueError, match="order describes"):
        sampled_block_lse(q, k[:, :2], order=TokenOrder(3, 3))


@pytest.mark.parametrize("config", [LseConfig(blocks_per_program=3, num_stages=2), LseConfig(blocks_per_program=8, block_n=16)])
def test_programs_scoring_several_blocks_match_reference(config):
    """A program's run of key blocks may pass the last block (nb = 7 here): those are not written."""
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 2, 5, 32, generator=gen), torch.randn(1, 2, 7 * 32 - 11, 32, generator=gen)
    order = TokenOrder(3, 71)
    out = sampled_block_lse(q, k, block_size=32, order=order, backend="triton", config=config)
    torch.testing.assert_close(out, sampled_block_lse_reference(q, k, block_size=32, order=order), atol=1e-4, rtol=1e-4)


def test_launch_shape():
    assert LseConfig().resolve(num_blocks=256, programs_per_block=24) == LseConfig(1, 64)  # Wan 480p
    assert LseConfig().resolve(num_blocks=929, programs_per_block=48) == LseConfig(8, 128)  # HunyuanVideo 720p
    assert LseConfig(blocks_per_program=2).resolve(929, 48) == LseConfig(2, 128)
    with pytest.raises(ValueError, match="blocks_per_program"):
        LseConfig(blocks_per_program=0).resolve(8, 6)
