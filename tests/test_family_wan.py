import pytest

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.bench.tiny_pipelines.wan import TEXT_DIM, build, call_kwargs  # noqa: F401 (TEXT_DIM: test_lifecycle)

import family_checks as checks


BRANCHES = ["cond", "uncond"]  # CFG branches as the runtime names them


def test_wan22_two_transformers_both_sparse():
    pipe = build(transformer_2=True)
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=0, dense_layers=0, **checks.TINY))
    pipe(**{**call_kwargs(), "num_inference_steps": 4})
    stats = handle.stats()
    assert set(handle.runtimes) == {"transformer", "transformer_2"}
    assert {name.split(".")[0] for name in stats.layers} == {"transformer", "transformer_2"}
    # the boundary splits the steps: high-noise steps on one transformer, the rest on the other
    steps = stats.steps
    high = steps["transformer"]["cond"]["sparse"]
    low = steps["transformer_2"]["cond"]["sparse"]
    assert high and low and max(high) < min(low) and sorted(high + low) == [0, 1, 2, 3]
