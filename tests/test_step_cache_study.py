"""The step-cache quality study (dit_sparse/study/step_cache_study.py): which steps a cache served,
counted from the last block's calls; compare with several caches and the presets alone; the
parts-against-combination statistics, the default and the schedules bench_step_cache reads."""

import json

import numpy as np
import pytest
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

from dit_sparse.bench.step_cache import load_schedules, schedule_for
from dit_sparse.config import SparseAttentionConfig
from dit_sparse.generation import ComputedCalls
from dit_sparse.study import step_cache_study as study

import step_cache_checks as sc
from test_cli import model_dir  # noqa: F401 (a fixture)

STEPS = 6


def test_computed_calls_see_the_steps_a_cache_served():
    pipe = sc.wan.build()
    recorder = ComputedCalls(pipe)
    sc.generate(pipe, "wan")
    assert recorder.skipped_steps(sc.STEPS) == [] and recorder.skipped_fraction() == 0.0
    assert len(recorder.calls) == 2 * sc.STEPS  # cond and uncond
    recorder.close()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # serves every step after the first
    recorder = ComputedCalls(pipe)
    sc.generate(pipe, "wan")
    recorder.close()
    assert recorder.skipped_steps(sc.STEPS) == list(range(1, sc.STEPS))
    assert recorder.skipped_fraction() == pytest.approx((sc.STEPS - 1) / sc.STEPS)
    assert recorder.skipped_steps(sc.STEPS - 1) is None  # calls that do not divide into the steps


def test_parts_psnr_adds_the_errors():
    assert study.parts_psnr(30.0, 30.0) == pytest.approx(30.0 - 10 * np.log10(2))
    assert study.parts_psnr(float("inf"), 25.0) == pytest.approx(25.0)
    assert study.parts_psnr(float("inf"), float("inf")) == float("inf")
    assert study.most_common([[1, 2], [1, 2], [3], None], 4) == ([False, True, True, False], 2)


@pytest.fixture(scope="module")
def result(model_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("study")
    def caches(labels, threshold):  # TaylorSeer serving within 6 steps; FirstBlockCache as the study builds it
        assert list(labels) == ["first-block", "taylorseer"]
        taylorseer = TaylorSeerCacheConfig(use_lite_mode=True, cache_interval=2, disable_cache_before_step=2)
        return {"first-block": FirstBlockCacheConfig(threshold=threshold), "taylorseer": taylorseer}

    patch = pytest.MonkeyPatch()
    patch.setattr(study, "caches", caches)
    try:  # threshold 1e9: FirstBlockCache serves every step it may
        study.main(["--model", str(model_dir), "--out", str(out), "--prompts", "1", "--seeds", "0", "--steps", str(STEPS),
                    "--num-frames", "5", "--height", "32", "--width", "32", "--device", "cpu", "--block-size", "16",
                    "--caches", "first-block,taylorseer", "--first-block-threshold", "1e9"])
    finally:
        patch.undo()
    return out


def test_study_runs_every_cache_alone_and_with_each_preset(result):
    data = json.loads((result / "quality_step_cache.json").read_text())
    rows = data["rows"]
    assert list(rows) == ["balanced", "fast", "dense+first-block", "balanced+first-block", "fast+first-block",
                          "dense+taylorseer", "balanced+taylorseer", "fast+taylorseer"]
    assert rows["balanced"]["skipped_steps"] == 0 and rows["balanced"]["group"] == "sparse alone"
    # alone, FirstBlockCache serves every step but the first; beside a preset, not its dense warm-up
    warmup = {p: SparseAttentionConfig.preset(p).num_dense_steps(STEPS) for p in study.PRESETS}
    assert rows["dense+first-block"]["skipped_steps"] == STEPS - 1
    for preset in study.PRESETS:
        assert rows[f"{preset}+first-block"]["skipped_steps"] == STEPS - max(1, warmup[preset])
        assert set(data["interactions"][f"{preset}+first-block"]) == {"parts_psnr", "excess_loss", "met"}
    runs = json.loads((result / "quality_step_cache_runs" / "report.json").read_text())["runs"]
    assert next(r for r in runs if r["preset"] == "dense+first-block")["skipped"] == list(range(1, STEPS))
    md = (result / "quality_step_cache.md").read_text()
    assert "| balanced+taylorseer | combination |" in md and "Default combination" in md
    assert "FirstBlockCache at threshold 1000000000.0" in md and "no cache serves our dense warm-up" in md


def test_study_writes_the_schedules_the_benchmark_reads(result):
    schedules = load_schedules(result / "step_cache_schedules.json")
    assert set(schedules) == {"first-block", "taylorseer"}
    fbc = schedules["first-block"]
    assert fbc["alone"] == [False] + [True] * (STEPS - 1) and fbc["config"] == {"threshold": 1e9}
    fast, balanced = (SparseAttentionConfig.preset(p) for p in ("fast", "balanced"))
    assert schedule_for(fbc, fast) == fbc["by_dense_steps"][str(fast.dense_steps)]
    assert schedule_for(fbc, balanced) == fbc["by_dense_steps"][str(balanced.dense_steps)]
    assert "the bundled demo model" in fbc["source"]


def test_cache_in_warmup_serves_the_warmup_too(model_dir, tmp_path, monkeypatch):  # noqa: F811
    """With --cache-in-warmup the combinations serve as the cache alone does, warm-up included."""
    study.main(["--model", str(model_dir), "--out", str(tmp_path), "--prompts", "1", "--seeds", "0", "--steps", str(STEPS),
                "--num-frames", "5", "--height", "32", "--width", "32", "--device", "cpu", "--block-size", "16",
                "--cache-in-warmup", "--caches", "first-block", "--first-block-threshold", "1e9"])
    data = json.loads((tmp_path / "quality_step_cache.json").read_text())
    assert data["meta"]["cache_in_warmup"]
    for preset in study.PRESETS:
        assert data["rows"][f"{preset}+first-block"]["skipped_steps"] == STEPS - 1
    assert "cache_in_warmup=True" in (tmp_path / "quality_step_cache.md").read_text()


def test_worker_processes_repeat_the_command_line_but_their_seeds():
    """--workers runs shards with the command line's own options (--cache-in-warmup, the threshold...) but not
    --seeds or --workers, in either spelling."""
    from dit_sparse.study.quality_study import shard_args

    argv = ["--out", "x", "--seeds", "0,1", "--workers", "6", "--cache-in-warmup", "--first-block-threshold", "0.3",
            "--workers=2", "--seeds=1", "--caches", "first-block"]
    assert shard_args(argv) == ["--out", "x", "--cache-in-warmup", "--first-block-threshold", "0.3", "--caches", "first-block"]


def test_unknown_cache_is_refused(capsys):
    with pytest.raises(SystemExit):
        study.parser().parse_args(["--caches", "first-block,teacache"])
    assert "unknown caches ['teacache']" in capsys.readouterr().err
