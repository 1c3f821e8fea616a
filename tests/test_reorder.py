import pytest
import torch

from dit_sparse.kernels import TokenOrder, reorder_tokens, reorder_tokens_reference


@pytest.mark.parametrize("text_position,text_len", [("none", 0), ("prefix", 11), ("suffix", 6)])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_round_trip_and_text_in_place(text_position, text_len, backend):
    order = TokenOrder(frames=4, positions=15, text_len=text_len, text_position=text_position)
    x = torch.randn(2, 3, order.num_tokens, 40)
    heads = [0, 2]
    y = reorder_tokens(x, order, heads, backend=backend)
    # unchosen heads and text tokens untouched
    torch.testing.assert_close(y[:, 1], x[:, 1], rtol=0, atol=0)
    s0 = order.video_start
    video = slice(s0, s0 + 60)
    text = torch.ones(order.num_tokens, dtype=torch.bool)
    text[video] = False
    torch.testing.assert_close(y[:, :, text], x[:, :, text], rtol=0, atol=0)
    # position-major: reordered token (pos, frame) is native token (frame, pos)
    grid = x[:, 0, video].view(2, 4, 15, 40)
    torch.testing.assert_close(y[:, 0, video].view(2, 15, 4, 40), grid.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(reorder_tokens(y, order, heads, inverse=True, backend=backend), x, rtol=0, atol=0)


def test_triton_matches_reference_with_batch_head_mask():
    order = TokenOrder(frames=3, positions=37, text_len=5, text_position="prefix")
    x = torch.randn(2, 4, order.num_tokens, 64)
    heads = torch.tensor([[True, False, False, True], [False, True, True, False]])
    for inverse in (False, True):
        y = reorder_tokens(x, order, heads, inverse=inverse, backend="triton")
        torch.testing.assert_close(y, reorder_tokens_reference(x, order, heads, inverse=inverse), rtol=0, atol=0)


def test_permutations_are_inverse():
    order = TokenOrder(frames=6, positions=9, text_len=4, text_position="suffix")
    perm, inv = order.position_major_index(), order.frame_major_index()
    assert torch.equal(perm[inv], torch.arange(order.num_tokens))
    assert sorted(perm.tolist()) == list(range(order.num_tokens))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(frames=0, positions=4), "frames"),
        (dict(frames=2, positions=4, text_position="middle"), "text_position"),
        (dict(frames=2, positions=4, text_len=3), "needs text_position"),
    ],
)
def test_bad_order(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenOrder(**kwargs)


def test_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="does not match the grid"):
        reorder_tokens(torch.randn(1, 1, 10, 8), TokenOrder(3, 4), backend="torch")


@pytest.mark.parametrize("block_s,num_warps", [(32, 8), (128, 2)])
def test_flagged_heads_pass_reorders_only_flagged_heads(block_s, num_warps):
    """The pass the attention kernel uses: flagged heads position-major, from a (B, S, H, D)
    view as the processors hand it over, for any rows-per-program launch."""
    from dit_sparse.kernels.reorder import reorder_flagged_heads

    order = TokenOrder(4, 37, 5, "suffix")
    x = torch.randn(2, order.num_tokens, 3, 16).transpose(1, 2)
    flags = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.int8)
    out = reorder_flagged_heads(x, order, flags, block_s=block_s, num_warps=num_warps)
    expected = reorder_tokens_reference(x, order, flags.bool())
    mask = flags.bool()
    torch.testing.assert_close(out[mask], expected[mask], rtol=0, atol=0)
