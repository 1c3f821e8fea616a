"""Sparse attention inside torch.compile(fullgraph=True), for every family.

Regional compilation (diffusers' `compile_repeated_blocks`, or each block compiled where a model
declares no repeated blocks) and whole-transformer compilation, with the `aot_eager` backend:
on the CPU it proves tracing (no graph break anywhere inside the compiled code) without
Inductor's compile time. Outputs equal eager ones; the graphs stay few over a generation
(dense, first profile, re-profile, cached) and a new generation's new plans compile nothing.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.generation import compile_blocks

import family_checks as checks
import test_family_cogvideox
import test_family_flux
import test_family_hunyuan_video
import test_family_ltx
import test_family_qwenimage
import test_family_sd3
import test_family_wan

FAMILIES = {
    "wan": test_family_wan, "cogvideox": test_family_cogvideox, "hunyuan_video": test_family_hunyuan_video,
    "ltx": test_family_ltx, "flux": test_family_flux, "sd3": test_family_sd3, "qwenimage": test_family_qwenimage,
}
# step 0 dense, then profile (1), cached (2), re-profile (3), cached (4); layer 0 always dense
CONFIG = SparseAttentionConfig(dense_steps=1, dense_layers=1, refresh_every=2, **checks.TINY)
STEPS = 5
# Graphs compiled over a generation, at most: four modes per block class (dense, first profile,
# re-profile once the plan tensors exist, cached), times what else the blocks' inputs vary in:
# the first block of a class gets its input in another layout than the blocks after it (+1, a
# stride guard, as for the stock model; it is a dense layer here); Flux has two block classes;
# Qwen-Image's and HunyuanVideo's tiny pipelines give cond and uncond different text lengths
# (x2); SD3's blocks differ in structure (joint only, joint + image-only attn2, context_pre_only);
# HunyuanVideo also compiles its patch embedding and token refiner.
REGIONAL_GRAPHS = {"wan": 5, "cogvideox": 5, "ltx": 5, "flux": 9, "qwenimage": 9, "sd3": 11, "hunyuan_video": 26}
WHOLE_GRAPHS = {"wan": 4, "flux": 5, "hunyuan_video": 8}  # one graph per mode (x2 text lengths for HunyuanVideo)


def kwargs_of(family, seed=1):
    return lambda: {**family.call_kwargs(), "num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(seed)}


def eager_output(family):
    """The generation's output without compiling: what the compiled runs must equal."""
    pipe = family.build()
    dit_sparse.apply(pipe, CONFIG)
    return checks.generate(pipe, kwargs_of(family))


@pytest.fixture(autouse=True)
def fresh_dynamo(monkeypatch):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 64)
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", FAMILIES)
def test_regional_compile_traces_whole_blocks_and_matches_eager(name):
    family = FAMILIES[name]
    expected = eager_output(family)
    pipe = family.build()
    handle = dit_sparse.apply(pipe, CONFIG)
    counter = CompileCounterWithBackend("aot_eager")
    compile_blocks(pipe.transformer, backend=counter)
    out = checks.generate(pipe, kwargs_of(family))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert handle.stats().sparse_calls > 0 and handle.stats().num_profiles > 0
    assert not torch._dynamo.utils.counters["graph_break"]
    graphs = counter.frame_count
    assert 0 < graphs <= REGIONAL_GRAPHS[name]
    checks.generate(pipe, kwargs_of(family, seed=7))  # new noise, new plans in the same tensors
    assert counter.frame_count == graphs


@pytest.mark.parametrize("name", ["wan", "flux", "hunyuan_video"])
def test_whole_transformer_compile_after_reapplying(name):
    """torch.compile(transformer, fullgraph=True) after apply: apply again moves the step hook onto
    the compiled wrapper (its host work stays outside the graph); without that, a clear error."""
    family = FAMILIES[name]
    expected = eager_output(family)
    pipe = family.build()
    handle = dit_sparse.apply(pipe, CONFIG)
    counter = CompileCounterWithBackend("aot_eager")
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True, backend=counter)
    with pytest.raises(Exception, match="compiled region.*dit_sparse.apply\\(pipe\\) again"):
        checks.generate(pipe, kwargs_of(family))
    torch._dynamo.reset()
    counter.frame_count = 0
    assert dit_sparse.apply(pipe) is handle
    out = checks.generate(pipe, kwargs_of(family))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    graphs = counter.frame_count
    assert 0 < graphs <= WHOLE_GRAPHS[name]
    checks.generate(pipe, kwargs_of(family, seed=7))
    assert counter.frame_count == graphs
    dit_sparse.remove(pipe)
    assert dit_sparse.hooks.attached(pipe.transformer) is None
