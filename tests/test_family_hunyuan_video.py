import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.geometry import TokenGrid
from dit_sparse.families import base as family_base, hunyuan_video
from dit_sparse.bench.tiny_pipelines.hunyuan_video import DUAL, SINGLE, TEXT_LEN, build, call_kwargs

import family_checks as checks

FULL_BANDS = SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY)


BRANCHES = ["cond", "uncond"]  # CFG branches as the runtime names them
DENSE_STEPS_BIT_EXACT = False  # dense steps attend the valid tokens unmasked: equal to stock up to rounding


def test_dual_and_single_blocks_are_one_layer_sequence_refiner_untouched():
    pipe = build()
    handle = dit_sparse.apply(pipe, FULL_BANDS)
    t = pipe.transformer
    assert [block.attn.processor.layer for block in t.transformer_blocks] == list(range(DUAL))
    assert [block.attn.processor.layer for block in t.single_transformer_blocks] == list(range(DUAL, DUAL + SINGLE))
    refiner = [m.processor for name, m in t.named_modules() if name.startswith("context_embedder") and hasattr(m, "processor")]
    assert refiner and all(type(p) is AttnProcessor2_0 for p in refiner)
    pipe(**{**call_kwargs(), "num_inference_steps": 1})
    runtime = handle.runtimes["transformer"]
    assert {layer for layer, _ in runtime.cache.plans} == set(range(DUAL + SINGLE))
    # each branch's grid holds its own valid text length: the padded text tokens are dropped
    assert runtime.cache.plans[(0, "cond")].grid == TokenGrid(3, 6, 6, 9, "suffix")
    assert runtime.cache.plans[(0, "uncond")].grid == TokenGrid(3, 6, 6, 5, "suffix")


def test_padded_text_keys_stay_excluded(monkeypatch):
    """All heads dense through the sparse path on a prompt with 7 of 12 text tokens valid:
    matches stock, and would not if the padded text keys were attended."""
    kwargs = lambda: {**call_kwargs(cond_valid=(7,), uncond_valid=(3,)), "num_inference_steps": 2}  # noqa: E731
    pipe = build()
    stock = checks.generate(pipe, kwargs)
    handle = dit_sparse.apply(pipe, FULL_BANDS)
    out = checks.generate(pipe, kwargs)
    stats = handle.stats()
    assert stats.dense_calls == 0 and stats.sparse_calls > 0
    torch.testing.assert_close(out, stock, atol=2e-4, rtol=1e-3)

    # the same sparse path with the padded keys attended (every text token counted valid)
    monkeypatch.setattr(hunyuan_video, "_valid_text_lengths", lambda mask: [mask.shape[1]] * mask.shape[0])
    handle.reset()
    leaky = checks.generate(pipe, kwargs)
    assert handle.runtimes["transformer"].cache.plans[(0, "cond")].grid.text_len == TEXT_LEN
    assert not torch.allclose(leaky, stock, atol=2e-4, rtol=1e-3)  # max |diff| ~7e-2, vs ~2e-6 above


def test_batch_with_different_text_lengths_runs_stock():
    """Batch items with different valid text lengths: the stock attention, bit-identical."""
    kwargs = lambda: {**call_kwargs(cond_valid=(9, 6), uncond_valid=(5, 3)), "num_inference_steps": 2}  # noqa: E731
    pipe = build()
    stock = checks.generate(pipe, kwargs)
    handle = dit_sparse.apply(pipe, FULL_BANDS)
    out = checks.generate(pipe, kwargs)
    assert torch.equal(out, stock)
    assert handle.runtimes["transformer"].grid is None and handle.stats().sparse_calls == 0


def test_padded_text_query_rows_match_stock():
    """One attention call of each block kind, sparse path: the video rows and every text row,
    padded ones included (computed with the stock masked call), match the stock processor."""
    pipe = build()
    handle = dit_sparse.apply(pipe, FULL_BANDS)
    pipe(**{**call_kwargs(), "num_inference_steps": 1})  # leaves the runtime on the uncond grid: 5 text tokens valid
    t = pipe.transformer
    gen = torch.Generator().manual_seed(2)
    rope = t.rope(torch.zeros(1, 4, 3, 12, 12))
    video, text = torch.randn(1, 108, 32, generator=gen), torch.randn(1, TEXT_LEN, 32, generator=gen)
    mask = (torch.arange(108 + TEXT_LEN) < 108 + 5)[None, None, None]
    stock_processor = hunyuan_video.HunyuanVideoAttnProcessor2_0()
    for attn in (t.transformer_blocks[1].attn, t.single_transformer_blocks[1].attn):
        with checks.recording_sparse_calls() as seen:
            out = attn.processor(attn, video, text, mask, rope)
        assert len(seen) == 1  # the decision the last transformer call left: sparse
        for got, want in zip(out, stock_processor(attn, video, text, mask, rope)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_dense_steps_attend_valid_tokens_unmasked(monkeypatch):
    """Dense steps drop the padded text keys instead of masking them (cuDNN runs faster
    unmasked): no mask on the video + valid-text call, output equal to stock up to rounding;
    a disabled handle runs the stock masked call, bit for bit."""
    kwargs = lambda: {**call_kwargs(), "num_inference_steps": 2}  # noqa: E731
    pipe = build()
    stock = checks.generate(pipe, kwargs)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=1.0, **checks.TINY))
    masks = []
    original = family_base.dispatch_attention_fn

    def spy(query, key, value, attn_mask=None, **kw):
        masks.append((query.shape[1], key.shape[1], attn_mask is None))
        return original(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(family_base, "dispatch_attention_fn", spy)
    out = checks.generate(pipe, kwargs)
    torch.testing.assert_close(out, stock, atol=2e-4, rtol=1e-3)
    full = [m for m in masks if m[0] == m[1]]  # video + valid text rows against the same keys
    assert full and all(unmasked for _, _, unmasked in full)
    assert {keys for _, keys, _ in full} == {108 + 9, 108 + 5}  # cond and uncond valid lengths
    handle.enabled = False
    masks.clear()
    assert torch.equal(checks.generate(pipe, kwargs), stock)
    assert masks and not any(unmasked for _, _, unmasked in masks)
