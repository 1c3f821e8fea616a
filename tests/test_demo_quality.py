"""Quality regression guard on the bundled demo model: balanced sparse attention stays close to
dense. The floor is the quality study's target for the balanced preset (30 dB, see
docs/results/quality_demo.md). At this CI size these two prompts measured 35.8 and 35.0 dB,
the lowest of the eight study prompts."""

import pytest
import torch
from diffusers import WanPipeline

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.demo import STUDY_PROMPTS
from dit_sparse.generation import DEMO_MODEL, PIPELINES, GenerationRequest, generate
from dit_sparse.quality import psnr

FLOOR_DB = 30.0


@pytest.fixture(scope="module")
def demo_pipe():
    pipe = WanPipeline.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("prompt", [STUDY_PROMPTS[1], STUDY_PROMPTS[5]])
def test_balanced_stays_close_to_dense(demo_pipe, prompt):
    spec = PIPELINES["WanPipeline"]
    request = GenerationRequest(prompt=prompt, negative_prompt="", num_frames=17, height=128, width=128, steps=10,
                                guidance_scale=5.0, seed=0, max_sequence_length=32)
    dense = generate(demo_pipe, spec, request)
    handle = dit_sparse.apply(demo_pipe, SparseAttentionConfig.preset("balanced", block_size=32))
    try:
        sparse = generate(demo_pipe, spec, request, handle)
    finally:
        dit_sparse.remove(demo_pipe)
    assert sparse.stats["sparse_calls"] > 0 and sparse.stats["mean_density"] < 0.9  # it did run sparse
    assert psnr(sparse.frames, dense.frames) >= FLOOR_DB
