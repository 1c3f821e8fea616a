"""The end-to-end benchmark (dit_sparse.bench, scripts/bench_e2e.py): token counts of the real
resolutions, the 50-step composition, the token grid from the family registry, the step seam,
and the whole code path in --tiny mode on the CPU (Wan with the full loop, Flux)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dit_sparse import SparseAttentionConfig
from dit_sparse.bench import models
from dit_sparse.bench.e2e import (
    BASELINES, ProgressLog, RunOptions, compose, eager_calls, profile_steps, run_model, run_models,
)
from dit_sparse.bench.models import latent_shape, latent_tokens, prepare_model
from dit_sparse.bench.report import record_id
from dit_sparse.bench.specs import SPECS, load_config, sparse_configs
from dit_sparse.bench.trace import kernel_category
from dit_sparse.families import find_family
from dit_sparse.geometry import TokenGrid
from dit_sparse.bench.timing import gpu_tag, write_gpu_results

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
REQUIRED = {
    "model", "height", "width", "num_frames", "tokens", "config", "dense_s_per_step", "sparse_s_per_step",
    "profile_s_per_step", "attention_share", "mean_density", "speedup", "total_dense_s", "total_sparse_s", "steps",
    "dense_steps", "dense_layers", "refresh_every", "density",
}


def test_token_counts_of_the_real_resolutions():
    tokens = {key: latent_tokens(spec) for key, spec in SPECS.items()}
    assert tokens["wan1.3b-480"] == 32760  # 21 x 30 x 52
    assert tokens["hunyuan-720"] == 118800  # 33 x 45 x 80
    assert tokens["flux-1024"] == 4096  # 64 x 64 packed
    assert tokens["flux-2048"] == 16384
    assert tokens["wan14b-720"] == tokens["wan1.3b-720"] == 75600
    # CogVideoX1.5: 81 frames -> 21 latent frames, padded to 22 for patch_size_t = 2 -> 11 x 48 x 85
    config = load_config(SPECS["cogvideox-768"])
    assert latent_shape("cogvideox", config, 768, 1360, 81) == (22, 96, 170)
    assert tokens["cogvideox-768"] == 11 * 48 * 85
    assert all(spec.known_tokens in (None, tokens[key]) for key, spec in SPECS.items())


def test_a_wrong_token_count_is_refused():
    spec = dataclasses.replace(SPECS["wan1.3b-480"], known_tokens=32761)
    with pytest.raises(RuntimeError, match="32760 tokens, expected 32761"):
        models.check_known_tokens(spec, TokenGrid(21, 30, 52))


def test_profile_steps_and_composition():
    assert [profile_steps(40, r) for r in (1, 5, 3, 0)] == [40, 8, 14, 1]
    assert profile_steps(0, 5) == 0
    config = SparseAttentionConfig(dense_steps=10, refresh_every=5, density=0.3)
    total = compose(config, dense_s=2.0, profile_s=1.5, cached_s=1.0)
    assert total == dict(n_dense_steps=10, n_profile_steps=8, n_cached_steps=32, total_sparse_s=10 * 2.0 + 8 * 1.5 + 32 * 1.0)

    hunyuan = sparse_configs(SPECS["hunyuan-720"], num_layers=60)
    svg = hunyuan["svg"]
    assert (svg.dense_steps, svg.dense_layers, svg.refresh_every, svg.density) == (5, 2, 1, 0.25)
    assert compose(svg, 3.0, 2.0, 1.0) == dict(n_dense_steps=5, n_profile_steps=45, n_cached_steps=0,
                                               total_sparse_s=5 * 3.0 + 45 * 2.0)
    wan = sparse_configs(SPECS["wan1.3b-480"], num_layers=30)
    assert (wan["svg"].dense_steps, wan["svg"].dense_layers, wan["svg"].density) == (10, 1, 0.3)
    assert (wan["balanced"].dense_steps, wan["balanced"].refresh_every, wan["balanced"].density) == (10, 2, 0.3)
    assert (wan["fast"].dense_steps, wan["fast"].dense_layers) == (5, 1)


@pytest.mark.parametrize("key", list(SPECS))
def test_grid_comes_from_the_family_registry(key, monkeypatch):
    """Every entry's grid is its family's `grid` of the step's first call (spied on), and the
    timesteps are that family scheduler's 50."""
    seen = []

    def spying_family(model):
        family = find_family(model)

        def grid(transformer, inputs):
            seen.append((transformer, inputs))
            return family.grid(transformer, inputs)

        return dataclasses.replace(family, grid=grid)

    monkeypatch.setattr(models, "find_family", spying_family)
    bench = prepare_model(SPECS[key], tiny=True, device=CPU, dtype=torch.float32)
    assert find_family(bench.model).name == SPECS[key].family
    assert seen == [(bench.model, bench.workload.calls[0])]
    assert bench.grid == find_family(bench.model).grid(bench.model, bench.workload.calls[0])
    assert bench.num_tokens == bench.grid.num_video_tokens and len(bench.timesteps) == 50


def test_the_step_calls_are_a_seam(monkeypatch):
    """run_model times whatever its baseline's entry of BASELINES returns: here the eager calls,
    counted; every record names the baseline."""
    counts = {"step": 0, "first_call": 0}

    def counting_calls(model, workload):
        calls = eager_calls(model, workload)

        def step(t):
            counts["step"] += 1
            calls.step(t)

        def first_call(t):
            counts["first_call"] += 1
            return calls.first_call(t)

        return dataclasses.replace(calls, step=step, first_call=first_call)

    monkeypatch.setitem(BASELINES, "counting", counting_calls)
    options = RunOptions(repeats=1, tiny=True, command="test")
    records, _ = run_model(SPECS["flux-1024"], options, CPU, torch.float32, ProgressLog(), "counting")
    assert [r["config"] for r in records] == ["dense", "svg", "balanced", "fast"]
    assert {r["baseline"] for r in records} == {"counting"}
    assert counts["step"] > 0 and counts["first_call"] > 0


def test_tiny_run_records_and_merge(tmp_path):
    threads = torch.get_num_threads()
    options = RunOptions(repeats=1, full_loop=True, tiny=True, command="first run")
    data = run_models(["wan1.3b-480", "flux-1024"], tmp_path, options)
    assert torch.get_num_threads() == threads
    assert data == json.loads((tmp_path / "e2e_tiny.json").read_text())
    records = data["records"]
    assert not data["errors"]
    assert [(r["key"], r["config"]) for r in records] == [
        (key, config) for key in ("wan1.3b-480", "flux-1024") for config in ("dense", "svg", "balanced", "fast")
    ]
    for r in records:
        assert REQUIRED <= set(r)
        bench = prepare_model(SPECS[r["key"]], tiny=True, device=CPU, dtype=torch.float32)
        assert r["tokens"] == bench.grid.num_video_tokens
        assert r["total_dense_s"] == pytest.approx(r["steps"] * r["dense_s_per_step"])
        assert r["speedup"] == pytest.approx(r["total_dense_s"] / r["total_sparse_s"])
        if r["config"] == "dense":
            continue
        assert r["n_dense_steps"] + r["n_profile_steps"] + r["n_cached_steps"] == r["steps"]
        assert r["total_sparse_s"] == pytest.approx(
            r["n_dense_steps"] * r["warmup_s_per_step"] + r["n_profile_steps"] * r["profile_s_per_step"]
            + r["n_cached_steps"] * r["sparse_s_per_step"])
        assert r["speedup_vs_warmup"] == pytest.approx(r["steps"] * r["warmup_s_per_step"] / r["total_sparse_s"])
        assert 0 < r["mean_density"] < 1
    looped = {r["config"]: r for r in records if "measured_total_s" in r}
    assert set(looped) == {"dense", "svg", "balanced"} and all(r["key"] == "wan1.3b-480" for r in looped.values())
    for name in ("svg", "balanced"):
        assert looped[name]["loop_num_profiles"] == looped[name]["loop_expected_profiles"] > 0
    assert "| Wan2.1-T2V-1.3B |" in (tmp_path / "e2e_tiny.md").read_text()

    # the script's command line: a second run of one model replaces its records and keeps the other model's
    args = ["--models", "flux-1024", "--tiny", "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "| FLUX.1-dev |" in done.stdout
    again = json.loads((tmp_path / "e2e_tiny.json").read_text())
    assert sorted(map(record_id, again["records"])) == sorted(map(record_id, records))
    assert again["commands"] == ["first run", "python scripts/bench_e2e.py " + " ".join(args)]
    for r in again["records"]:
        assert (r["command"] == again["commands"][-1]) == (r["key"] == "flux-1024")


def test_compiled_run_compares_with_eager_and_compiles_nothing_in_its_loops(monkeypatch):
    """The compiled baseline alone (Inductor on the CPU): the attention calls recorded from an eager
    call, dense and sparse outputs equal to eager ones of the same config, and every kind of call
    compiled before the timed 50-step loops, which then compile nothing."""
    from torch._dynamo.utils import counters

    from dit_sparse.bench import e2e

    compiled_in_loops = []
    run_loop = e2e.run_loop

    def counting_loop(calls, timesteps):
        before = counters["stats"]["unique_graphs"]
        run_loop(calls, timesteps)
        compiled_in_loops.append(counters["stats"]["unique_graphs"] - before)

    monkeypatch.setattr(e2e, "run_loop", counting_loop)
    torch._dynamo.reset()
    options = RunOptions(repeats=1, full_loop=True, tiny=True, command="test")
    records, dense = run_model(SPECS["wan1.3b-480"], options, CPU, torch.float32, ProgressLog(), "compiled")
    assert {r["baseline"] for r in records} == {"compiled"} and dense.attention_share > 0
    by_config = {r["config"]: r for r in records}
    for name in ("dense", "svg"):
        match = by_config[name]["compiled_vs_eager"]
        assert match["rel_l2"] < 1e-5 and match["cosine"] > 0.9999
    assert by_config["dense"]["compiled_vs_eager"]["equal"] is None  # the reference
    assert by_config["svg"]["compiled_vs_eager"]["equal"] and by_config["svg"]["compiled_vs_eager"]["tolerance"] == 2 ** -7
    assert compiled_in_loops == [0, 0, 0]  # dense, svg, balanced
    for name in ("svg", "balanced"):
        assert by_config[name]["loop_num_profiles"] == by_config[name]["loop_expected_profiles"] > 0
    torch._dynamo.reset()


def test_compiled_agreement_is_judged_against_stock_dense():
    from dit_sparse.bench.e2e import judge_agreement

    records = [dict(config="dense", compiled_vs_eager=dict(rel_l2=0.015)),
               dict(config="svg", compiled_vs_eager=dict(rel_l2=0.016)),
               dict(config="fast", compiled_vs_eager=dict(rel_l2=0.02)),
               dict(config="balanced", compiled_vs_eager=None)]
    judge_agreement(records)
    assert [r["compiled_vs_eager"] and r["compiled_vs_eager"]["equal"] for r in records] == [None, True, False, None]
    assert records[1]["compiled_vs_eager"]["tolerance"] == pytest.approx(0.0165)


def test_unknown_models_are_refused_by_the_script():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--models", "wan2"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "unknown model ['wan2']" in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--baselines", "eager,jit"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "unknown baseline ['jit']" in done.stderr


def test_trace_kernel_categories():
    assert kernel_category("_bsa_fwd_tma_kernel") == "sparse attention (ours)"
    assert kernel_category("_reorder_kernel") == "reorder (ours)"
    assert kernel_category("_block_lse_kernel") == "profiling (ours)"
    assert kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "dense attention (SDPA)"
    assert kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32") == "GEMM"
    assert kernel_category("triton_tem_fused_addmm_0") == "GEMM"
    assert kernel_category("triton_poi_fused_add_mul_native_layer_norm_3") == "fused by Inductor"
    assert kernel_category("triton_red_fused__to_copy_add_1") == "fused by Inductor"
    assert kernel_category("vectorized_elementwise_kernel") == "other"


def test_gpu_tag_names_result_files_by_gpu():
    assert gpu_tag("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_tag("NVIDIA H200") == "h200"
    assert gpu_tag("NVIDIA GeForce RTX 4090") == "4090"
    assert gpu_tag("NVIDIA A100-SXM4-80GB") == "a100_sxm4_80gb"
    with pytest.raises(ValueError, match="no GPU name"):
        gpu_tag("NVIDIA ")


def test_gpu_results_are_written_as_a_json_and_markdown_pair(tmp_path):
    md = write_gpu_results(tmp_path / "new", "rotary", "NVIDIA H200", dict(records=[1, 2]), "# table\n")
    assert md == tmp_path / "new" / "rotary_h200.md" and md.read_text() == "# table\n"
    assert json.loads((tmp_path / "new" / "rotary_h200.json").read_text()) == dict(records=[1, 2])
