import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.geometry import TokenGrid
from dit_sparse.bench.tiny_pipelines.sd3 import TEXT_LEN, build, call_kwargs

import family_checks as checks


BRANCHES = ["0"]  # batched CFG without a cache context: one branch, named by its ordinal


def test_joint_and_image_only_attention_layers():
    """`attn` of block i is layer i over image + text; `attn2` of block i is layer 3 + i over
    the image tokens alone."""
    pipe = build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, density=1.0, **checks.TINY))
    blocks = pipe.transformer.transformer_blocks
    assert [b.attn.processor.layer for b in blocks] == [0, 1, 2]
    assert [b.attn2.processor.layer for b in blocks[:2]] == [3, 4] and blocks[2].attn2 is None
    assert blocks[0].attn.processor is not blocks[0].attn2.processor
    pipe(**{**call_kwargs(), "num_inference_steps": 1})
    runtime = handle.runtimes["transformer"]
    assert {layer for layer, _ in runtime.cache.plans} == {0, 1, 2, 3, 4}
    plans = runtime.cache.plans
    assert all(plans[(i, 0)].grid == TokenGrid(1, 12, 8, TEXT_LEN, "suffix") for i in range(3))
    assert all(plans[(i, 0)].grid == TokenGrid(1, 12, 8) for i in (3, 4))
    assert all(plans[(i, 0)].shape == (2, 2, 96 + TEXT_LEN) for i in range(3))  # batched CFG: B = 2
