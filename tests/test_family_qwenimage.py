from functools import partial

import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.families.qwenimage import QWENIMAGE, SparseQwenDoubleStreamAttnProcessor
from dit_sparse.runtime import SparseRuntime
from dit_sparse.geometry import TokenGrid
from dit_sparse.bench.tiny_pipelines.qwenimage import COLS, COND_LEN, ROWS, TEXT_DIM, UNCOND_LEN, build, call_kwargs

import family_checks as checks


BRANCHES = ["cond", "uncond"]  # CFG branches as the runtime names them


def test_grid_matches_attention_sequence():
    """Grid from img_shapes (1, 8, 12) with each branch's own text prefix; it counts exactly the
    tokens the processor passes to attention."""
    pipe = build()
    dit_sparse.apply(pipe, SparseAttentionConfig(dense_layers=0, **checks.TINY))
    with checks.recording_sparse_calls() as seen:
        pipe(**{**call_kwargs(), "num_inference_steps": 1})
    assert len(seen) == 2 * 3  # cond then uncond, three layers each
    lengths = [grid.text_len for grid, _ in seen]
    assert lengths == [COND_LEN] * 3 + [UNCOND_LEN] * 3
    for grid, shape in seen:
        assert grid == TokenGrid(1, ROWS, COLS, grid.text_len, "prefix")
        assert shape[2] == grid.num_tokens


def test_two_text_lengths_one_handle():
    """Generations with different text lengths on one handle: each re-profiles for its own
    grid and matches stock with full bands."""
    pipe = build()
    short = partial(call_kwargs, 5, 5, num_inference_steps=2)
    long = partial(call_kwargs, 21, 30, num_inference_steps=2)
    stock = [checks.generate(pipe, kw) for kw in (short, long)]
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY))
    for kw, expected in zip((short, long), stock):
        out = checks.generate(pipe, kw)
        torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-3)
        assert handle.stats().sparse_calls > 0


def test_padded_text_keys_stay_excluded():
    """A prompt padded with 4 masked tokens: the pipeline passes the mask, the sparse path sees
    only the 8 valid text tokens and the image, and the output matches the stock masked call."""
    mask = torch.tensor([[1] * 8 + [0] * 4])
    kwargs = partial(call_kwargs, 12, cond_mask=mask)
    pipe = build()
    stock = checks.generate(pipe, kwargs)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY))
    out = checks.generate(pipe, kwargs)
    assert handle.stats().sparse_calls > 0
    torch.testing.assert_close(out, stock, atol=2e-4, rtol=1e-3)
    with checks.recording_sparse_calls() as seen:
        pipe(**{**kwargs(), "num_inference_steps": 1})
    cond = seen[:3]
    assert all(grid == TokenGrid(1, ROWS, COLS, 8, "prefix") and shape[2] == 8 + ROWS * COLS for grid, shape in cond)


def test_other_masks_run_stock():
    """A mask with a hole gives no grid: every call runs the stock masked attention, bit-identical."""
    mask = torch.tensor([[1, 1, 0] + [1] * 9])
    kwargs = partial(call_kwargs, 12, cond_mask=mask, cfg=False)
    pipe = build()
    stock = checks.generate(pipe, kwargs)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY))
    assert torch.equal(checks.generate(pipe, kwargs), stock)
    assert handle.stats().sparse_calls == 0


def test_grid_function():
    transformer = build().transformer
    hidden, text = torch.zeros(2, 6 * 10, 4), torch.zeros(2, 9, TEXT_DIM)

    def grid(mask=None, shapes=((1, 6, 10),)):
        return QWENIMAGE.grid(transformer, dict(hidden_states=hidden, encoder_hidden_states=text,
                                                encoder_hidden_states_mask=mask, img_shapes=[list(shapes)] * 2))

    assert grid() == TokenGrid(1, 6, 10, 9, "prefix")
    assert grid(torch.ones(2, 9)) == TokenGrid(1, 6, 10, 9, "prefix")
    assert grid(torch.tensor([[1] * 6 + [0] * 3] * 2)) == TokenGrid(1, 6, 10, 6, "prefix")
    assert grid(torch.tensor([[1] * 6 + [0] * 3, [1] * 9])) is None  # per-sample lengths differ
    assert grid(torch.zeros(2, 9)) is None
    assert grid(shapes=((1, 6, 10), (1, 6, 10))) is None  # edit pipelines: appended condition image
    assert grid(shapes=((1, 5, 10),)) is None  # does not count hidden_states' tokens


def test_processor_with_padded_mask_matches_stock_processor():
    """One attention call, batch 2, 3 padded text tokens: image and text outputs (padded text
    rows included) match the stock processor with its key mask."""
    attn = build().transformer.transformer_blocks[1].attn
    gen = torch.Generator().manual_seed(2)
    image, text = torch.randn(2, 48, attn.query_dim, generator=gen), torch.randn(2, 10, attn.query_dim, generator=gen)
    mask = torch.tensor([[True] * 7 + [False] * 3] * 2)
    stock = attn.processor(attn, image, text, mask)
    runtime = SparseRuntime(SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY))
    processor = SparseQwenDoubleStreamAttnProcessor(runtime, layer=1)
    runtime.begin_call(TokenGrid(1, 6, 8, 7, "prefix"), timestep=1.0)
    sparse = processor(attn, image, text, mask)
    assert runtime.cache.sparse_calls == 1
    for got, expected in zip(sparse, stock):
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
