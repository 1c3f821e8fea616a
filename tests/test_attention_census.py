"""The attention census: exact chunked block masses, band recall, the classifier on heads built
to be spatial or temporal, and the script end to end on a tiny Wan pipeline."""

import json
import math

import numpy as np
import pytest
import torch

from dit_sparse.config import SparseAttentionConfig
from dit_sparse.demo.components import build_pipeline
from dit_sparse.geometry import TokenGrid
from dit_sparse.patterns import band_block_mask
from dit_sparse.study import attention_census as census


def dense_block_mass(q, k, grid, block_size):
    """Reference: the S x S softmax, its video rows summed into (query block, key block) per layout."""
    order = grid.order
    S = grid.num_tokens
    nb = math.ceil(S / block_size)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).double()
    perm = order.position_major_index()
    out = torch.zeros(q.shape[0], q.shape[1], 2, nb, nb, dtype=torch.float64)
    video = range(order.video_start, order.video_start + grid.num_video_tokens)
    for layout, rank in enumerate((torch.arange(S), order.frame_major_index())):
        reordered = probs if layout == 0 else probs[..., perm]
        for row in video:
            qb = int(rank[row]) // block_size
            for kb in range(nb):
                out[:, :, layout, qb, kb] += reordered[:, :, row, kb * block_size:(kb + 1) * block_size].sum(-1)
    return out


@pytest.mark.parametrize("text_len,text_position", [(0, "none"), (7, "prefix"), (5, "suffix")])
def test_chunked_block_mass_equals_dense_softmax(text_len, text_position):
    grid = TokenGrid(3, 4, 5, text_len, text_position)  # 60 video tokens: blocks of 16 straddle frames
    torch.manual_seed(0)
    q, k = (torch.randn(2, 3, grid.num_tokens, 8) * 2 for _ in range(2))
    got = census.block_mass(q, k, grid, 16, chunk_rows=7)
    want = dense_block_mass(q, k, grid, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # every video row's mass is 1 in each layout
    torch.testing.assert_close(got.sum((-1, -2)), torch.full((2, 3, 2), float(grid.num_video_tokens), dtype=torch.float64))


def test_recall_is_the_mass_inside_the_band_and_grows_with_density():
    grid = TokenGrid(8, 4, 4)
    torch.manual_seed(1)
    q, k = (torch.randn(1, 4, grid.num_tokens, 16) * 3 for _ in range(2))
    config = SparseAttentionConfig(block_size=16)
    bands = census.CensusBands(grid, config, densities=(0.1, 0.2, 0.3, 0.5, 0.8))
    mass = census.block_mass(q, k, grid, 16)
    recall = bands.recall(mass).view(1, 4, 5, 2)
    assert (recall.diff(dim=2) >= -1e-12).all()  # wider bands keep at least as much
    assert (recall[..., -1, :] > recall[..., 0, :]).all()  # and strictly more between the extremes here
    # the spatial band at density 0.3 by hand: mass of the rows inside its block mask, over the rows
    spatial = bands.fixed[2].candidates[0]
    mask = band_block_mask(grid, "spatial", spatial.width, 16)
    dense = dense_block_mass(q, k, grid, 16)
    torch.testing.assert_close(recall[0, :, 2, 0], (dense[0, :, 0] * mask).sum((-1, -2)) / grid.num_video_tokens)
    # the dense candidate of the adaptive bank keeps everything
    adaptive = bands.recall(mass, adaptive=True)
    torch.testing.assert_close(adaptive[..., bands.bank.dense_index], torch.ones(1, 4, dtype=torch.float64))


def structured_heads(grid, sharpness=6.0):
    """(1, 3, S, D) q = k for three heads: attends its own frame (spatial), its own position across
    frames (temporal), everything alike (dense)."""
    frames, positions = grid.frames, grid.positions
    token = torch.arange(grid.num_tokens)
    frame = torch.nn.functional.one_hot(token // positions, positions).double()
    position = torch.nn.functional.one_hot(token % positions, positions).double()
    dim = positions
    scale = math.sqrt(sharpness * math.sqrt(dim))  # q.k / sqrt(D) = sharpness where the one-hots match
    heads = [frame * scale, position * scale, torch.zeros(grid.num_tokens, dim)]
    assert frames <= positions
    qk = torch.stack(heads)[None].float()
    return qk


def test_heads_built_spatial_and_temporal_are_classified_so():
    grid = TokenGrid(8, 4, 4)  # blocks of 16: one frame each in native order, two positions in position-major
    qk = structured_heads(grid, sharpness=12.0)
    config = SparseAttentionConfig(block_size=16)
    bands = census.CensusBands(grid, config)
    mass = census.block_mass(qk, qk, grid, 16)
    recall = bands.recall(mass).view(3, len(census.DENSITIES), 2)
    assert (recall[0, :, 0] > 0.99).all() and (recall[0, :, 1] < 0.6).all()  # spatial head
    assert (recall[1, :, 1] > 0.99).all() and (recall[1, :, 0] < 0.6).all()  # temporal head
    exact = bands.recall(mass, adaptive=True)
    for target in census.RECALL_TARGETS:
        assert bands.kinds(bands.classify(exact, target)[0]) == [0, 1, 2]  # spatial, temporal, dense
        assert bands.kinds(bands.sampled(qk, qk, target)[0]) == [0, 1, 2]


def test_census_steps_cover_the_schedule():
    assert census.census_steps(20) == [0, 5, 10, 14, 19]
    assert census.census_steps(2) == [0, 1]


def test_kind_grid_marks_disagreement_in_lower_case():
    kinds = np.array([[[[0, 1]], [[2, 1]]], [[[0, 1]], [[0, 1]]], [[[0, 2]], [[2, 1]]]])  # (samples, T, L, H)
    assert census.kind_grid(kinds) == [["Sd", "tT"]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_wan")
    build_pipeline("tiny").save_pretrained(path)
    return path


TINY = ["--prompts", "2", "--steps", "3", "--num-frames", "17", "--height", "64", "--width", "64",
        "--max-sequence-length", "16", "--block-size", "16", "--device", "cpu"]


def test_script_end_to_end_side_by_side(model_dir, tmp_path):
    out = tmp_path / "out"
    report = census.main(["--model", f"old={model_dir}", "--model", f"new={model_dir}", *TINY, "--out", out])
    data = json.loads((out / "attention_census.json").read_text())
    assert [m["label"] for m in data["models"]] == ["old", "new"]
    old = data["models"][0]
    assert old["grid"] == dict(frames=5, height=4, width=4, text_len=0, text_position="none")
    recall = np.array(old["recall"])
    assert recall.shape == (2, 2, 3, 2, 2, len(census.DENSITIES), 2)  # prompts, branches, steps, layers, heads
    assert ((recall > 0) & (recall <= 1 + 1e-6)).all()
    assert (np.diff(recall, axis=-2) >= -1e-5).all()
    # the same model, seed and prompts: both columns agree
    np.testing.assert_allclose(recall, np.array(data["models"][1]["recall"]), atol=1e-5)
    counts = report["summaries"][0]["counts"]
    for target in census.RECALL_TARGETS:
        assert sum(counts[str(target)][k] for k in census.HEAD_KINDS) == 2 * 2 * 3 * 2 * 2
    md = (out / "attention_census.md").read_text()
    assert "| density | old spatial |" in md and "new spatial" in md and "## old: by denoising step" in md
    assert (out / "attention_census.png").stat().st_size > 5000
    # --reuse keeps the earlier models and adds a new one beside them
    again = tmp_path / "again"
    census.main(["--reuse", out / "attention_census.json", "--model", f"third={model_dir}", "--prompts", "1", *TINY[2:],
                 "--out", again])
    labels = [m["label"] for m in json.loads((again / "attention_census.json").read_text())["models"]]
    assert labels == ["old", "new", "third"]
