"""scripts/bench_e2e.py: token counts of the real resolutions, the 50-step composition, and the
whole code path in --tiny mode on the CPU (Wan with the full loop, Flux)."""

import json
import math
import sys
from pathlib import Path

import pytest

from dit_sparse import SparseAttentionConfig
from dit_sparse.timing import gpu_tag, write_gpu_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_e2e as bench  # noqa: E402

REQUIRED = {
    "model", "height", "width", "num_frames", "tokens", "config", "dense_s_per_step", "sparse_s_per_step",
    "profile_s_per_step", "attention_share", "mean_density", "speedup", "total_dense_s", "total_sparse_s", "steps",
    "dense_steps", "dense_layers", "refresh_every", "density",
}


def test_token_counts_of_the_real_resolutions():
    assert bench.tokens("wan1.3b-480") == 32760  # 21 x 30 x 52
    assert bench.tokens("hunyuan-720") == 118800  # 33 x 45 x 80
    assert bench.tokens("flux-1024") == 4096  # 64 x 64 packed
    assert bench.tokens("flux-2048") == 16384
    assert bench.tokens("wan14b-720") == bench.tokens("wan1.3b-720") == 75600
    # CogVideoX1.5: 81 frames -> 21 latent frames, padded to 22 for patch_size_t = 2 -> 11 x 48 x 85
    config = bench.load_config(bench.SPECS["cogvideox-768"])
    assert bench.latent_shape("cogvideox", config, 768, 1360, 81) == (22, 96, 170)
    assert bench.tokens("cogvideox-768") == 11 * 48 * 85


def test_profile_steps_and_composition():
    assert [bench.profile_steps(40, r) for r in (1, 5, 3, 0)] == [40, 8, 14, 1]
    assert bench.profile_steps(0, 5) == 0
    config = SparseAttentionConfig(dense_steps=10, refresh_every=5, density=0.3)
    total = bench.compose(config, dense_s=2.0, profile_s=1.5, cached_s=1.0)
    assert total == dict(n_dense_steps=10, n_profile_steps=8, n_cached_steps=32, total_sparse_s=10 * 2.0 + 8 * 1.5 + 32 * 1.0)

    hunyuan = bench.sparse_configs(bench.SPECS["hunyuan-720"], num_layers=60)
    svg = hunyuan["svg"]
    assert (svg.dense_steps, svg.dense_layers, svg.refresh_every, svg.density) == (5, 2, 1, 0.25)
    assert bench.compose(svg, 3.0, 2.0, 1.0) == dict(n_dense_steps=5, n_profile_steps=45, n_cached_steps=0,
                                                      total_sparse_s=5 * 3.0 + 45 * 2.0)
    wan = bench.sparse_configs(bench.SPECS["wan1.3b-480"], num_layers=30)
    assert (wan["svg"].dense_steps, wan["svg"].dense_layers, wan["svg"].density) == (10, 1, 0.3)
    assert (wan["balanced"].dense_steps, wan["balanced"].refresh_every, wan["balanced"].density) == (10, 2, 0.3)
    assert (wan["fast"].dense_steps, wan["fast"].dense_layers) == (5, 1)


def test_tiny_run_records_and_merge(tmp_path):
    bench.main(["--models", "wan1.3b-480,flux-1024", "--tiny", "--repeats", "1", "--full-loop", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "e2e_tiny.json").read_text())
    records = data["records"]
    assert not data["errors"]
    assert [(r["key"], r["config"]) for r in records] == [
        (key, config) for key in ("wan1.3b-480", "flux-1024") for config in ("dense", "svg", "balanced", "fast")
    ]
    for r in records:
        assert REQUIRED <= set(r)
        spec = bench.SPECS[r["key"]]
        height, width, frames, _ = bench.run_size(spec, tiny=True)
        config = bench.load_config(spec, tiny=True)
        assert r["tokens"] == math.prod(bench.token_grid(spec.family, config, height, width, frames))
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

    # a second run of one model replaces its records and keeps the other model's
    before = {bench.record_id(r): r for r in records}
    bench.main(["--models", "flux-1024", "--tiny", "--repeats", "1", "--out", str(tmp_path)])
    again = json.loads((tmp_path / "e2e_tiny.json").read_text())
    assert sorted(map(bench.record_id, again["records"])) == sorted(before)
    for r in again["records"]:
        assert (r["command"] == again["commands"][-1]) == (r["key"] == "flux-1024")
    assert len(again["commands"]) == 2


def test_trace_kernel_categories():
    assert bench.kernel_category("_bsa_fwd_tma_kernel") == "sparse attention (ours)"
    assert bench.kernel_category("_reorder_kernel") == "reorder (ours)"
    assert bench.kernel_category("_block_lse_kernel") == "profiling (ours)"
    assert bench.kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "dense attention (SDPA)"
    assert bench.kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32") == "GEMM"
    assert bench.kernel_category("vectorized_elementwise_kernel") == "other"


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
