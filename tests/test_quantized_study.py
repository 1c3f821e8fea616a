"""The quantized kernel's study on the demo model (dit_sparse/study/quantized_study.py): the q, k, v
recorder sees each layer's self-attention inputs at the chosen steps and leaves the processors as
they were; the accuracy figures are those of the references; the study runs end to end."""

import json

import pytest
import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.study import quantized_study as study

import step_cache_checks as sc
from test_cli import model_dir  # noqa: F401 (a fixture)


def test_recorder_keeps_each_layers_inputs_at_the_chosen_steps():
    pipe = sc.wan.build()
    handle = dit_sparse.apply(pipe, SparseAttentionConfig(dense_steps=1.0))
    processors = [p for r in handle.runtimes.values() for p in r.processors.values()]
    recorder = study.QKVRecorder(handle, {1, 3})
    sc.generate(pipe, "wan")
    recorder.close()
    assert sorted((layer, step) for layer, step, *_ in recorder.records) == sorted(
        (layer, step) for layer in range(len(processors)) for step in (1, 3))
    layer, step, q, k, v = recorder.records[0]
    assert q.shape == k.shape == v.shape and q.dim() == 4 and q.device.type == "cpu"
    assert all("attend" not in vars(p) for p in processors)  # the class's method again
    handle.remove()


def test_accuracy_of_the_references_on_recorded_like_inputs():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 300, 2, 64, generator=gen) for _ in range(3))
    result = study.accuracy([(0, 0, q, k, v)], ["int8", "fp8"])
    for fmt, worst in (("int8", 0.03), ("fp8", 0.08)):
        for pattern in ("all blocks", "random 0.3"):
            a = result[fmt][pattern]
            assert a["inputs"] == 1 and 0 < a["worst_rel_l2"] < worst and a["mean_cosine"] > 0.99
    assert result["int8"]["all blocks"]["worst_rel_l2"] < result["fp8"]["all blocks"]["worst_rel_l2"]


def test_study_runs_end_to_end(model_dir, tmp_path):  # noqa: F811
    study.main(["--model", str(model_dir), "--out", str(tmp_path), "--prompts", "1", "--seeds", "0", "--steps", "3",
                "--num-frames", "5", "--height", "32", "--width", "32", "--device", "cpu", "--accuracy-steps", "1"])
    result = json.loads((tmp_path / "quality_quantized.json").read_text())
    assert result["meta"]["accuracy_inputs"] == 2  # the tiny model's two layers at one step
    assert set(result["accuracy"]) == {"int8", "fp8"}
    assert list(result["quality"]) == ["balanced", "balanced-int8"]
    assert "## Clips against dense" in (tmp_path / "quality_quantized.md").read_text()


@pytest.mark.parametrize("formats", [["int8"], ["int8", "fp8"]])
def test_configs_differ_only_in_precision(formats):
    configs = study.configs("balanced", formats)
    base = configs.pop("balanced")
    assert base.backend == "torch" and base.precision == "bf16"
    assert {c.precision for c in configs.values()} == set(formats)
    assert all(c == SparseAttentionConfig(**{**vars(base), "precision": c.precision}) for c in configs.values())
