"""The sparse + step cache benchmark (dit_sparse/bench/step_cache.py) in --tiny mode on the CPU:
forced caches really skip or compute, totals follow the schedule, real loops of the
schedule-driven caches skip what their settings say and are composed from what they skipped."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dit_sparse import SparseAttentionConfig
from dit_sparse.bench.e2e import ProgressLog
from dit_sparse.bench.step_cache import CacheSteps, compose, recompose, resample, run_model, write_results
from dit_sparse.mag_ratios import load

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def test_resample_and_compose():
    assert resample([False, True], 5) == [False, False, False, True, True]
    assert resample([True, False, True], 3) == [True, False, True]
    config = SparseAttentionConfig(dense_steps=2, refresh_every=2, density=0.3)
    skipped = [True, False, False, True, True, False, False, False]  # step 0 lies in the warm-up: computed
    total = compose(config, dict(warmup=3.0, profile=2.0, cached=1.0), skipped, CacheSteps(1.5, 0.25), overhead=0.5)
    # 2 warm-up steps, 4 computed sparse steps (2 profile), 2 skipped
    assert total == dict(n_dense_steps=2, n_profile_steps=2, n_cached_steps=2, n_skipped_steps=2,
                         total_s=2 * 3.5 + 2 * 2.5 + 2 * 1.5 + 2 * 0.25)
    served = compose(dataclasses.replace(config, cache_in_warmup=True), dict(warmup=3.0, profile=2.0, cached=1.0), skipped,
                     CacheSteps(1.5, 0.25), overhead=0.5)
    # step 0 is served now: 1 warm-up step computed, the same 4 sparse steps, 3 skipped
    assert served == dict(n_dense_steps=1, n_profile_steps=2, n_cached_steps=2, n_skipped_steps=3,
                          total_s=1 * 3.5 + 2 * 2.5 + 2 * 1.5 + 3 * 0.25)


def test_tiny_run_with_schedules_and_loops(tmp_path):
    ratios = load("dit_sparse/assets/mag_ratios_demo_model.json")
    every_third, odd = [i % 3 == 2 for i in range(20)], [i >= 5 and i % 2 == 1 for i in range(20)]
    schedules = {
        "mag": dict(alone=every_third, by_dense_steps={"0.2": every_third, "0.1": odd}, source="test",
                    config=dict(threshold=0.5, max_skip_steps=2, retention_ratio=0.2, num_inference_steps=20,
                                mag_ratios=list(ratios))),
        "taylorseer": dict(alone=odd, by_dense_steps={"0.1": odd}, source="test",
                           config=dict(cache_interval=2, disable_cache_before_step=3)),
        "first-block": dict(alone=[False] * 20, by_dense_steps={"0.1": [False] * 20}, source="test"),
    }
    records = run_model("wan1.3b-480", ["first-block", "mag", "taylorseer"], schedules, "eager", 1, True, True,
                        CPU, torch.float32, ProgressLog())
    rows = {(r["config"], r["cache"]): r for r in records}
    assert set(rows) == {(c, k) for c in ("dense", "balanced", "fast") for k in ("none", "first-block", "mag", "taylorseer")}
    for (config, cache), r in rows.items():
        assert r["speedup"] == pytest.approx(r["total_dense_s"] / r["total_s"])
    # a skipped step costs less than a computed one; summed over the rows, as one CPU timing can be disturbed
    cached = [r for (_, cache), r in rows.items() if cache != "none"]
    assert sum(r["skipped_s_per_step"] for r in cached) < sum(r["computed_s_per_step"] for r in cached)
    # balanced holds 10 of the 50 steps dense (the 0.2 schedule): mag skips a third of the other 40
    assert rows["balanced", "mag"]["n_skipped_steps"] == sum(resample(every_third)[10:])
    assert rows["fast", "mag"]["n_skipped_steps"] == sum(resample(odd)[rows["fast", "mag"]["n_dense_steps"]:])
    assert rows["dense", "mag"]["n_skipped_steps"] == sum(resample(every_third))
    assert rows["balanced", "first-block"]["n_skipped_steps"] == 0
    for config in ("balanced", "fast"):
        for cache in ("mag", "taylorseer"):  # these two carry a chosen setting: a real loop each
            r = rows[config, cache]
            assert r["loop_skipped_steps"] > 0 and r["measured_total_s"] > 0 and r["loop_composed_s"] > 0
        assert "measured_total_s" not in rows[config, "first-block"]
    md = write_results(tmp_path, records, "test")
    assert md.name == "step_cache_tiny.md" and "| Wan2.1-T2V-1.3B |" in md.read_text()
    assert len(json.loads((tmp_path / "step_cache_tiny.json").read_text())["records"]) == len(records)

    # the same totals, composed again from the recorded step times alone (the real loops are not repeated)
    again = recompose(dict(records=records), ["wan1.3b-480"], ["first-block", "mag", "taylorseer"], schedules, False)
    assert [(r["config"], r["cache"]) for r in again] == [(r["config"], r["cache"]) for r in records]
    for new, old in zip(again, records):
        assert new["total_s"] == pytest.approx(old["total_s"]) and new.get("n_skipped_steps") == old.get("n_skipped_steps")
        assert "measured_total_s" not in new
    # new schedules: every step served, inside the warm-up too
    every = [True] * 20
    served = recompose(dict(records=records), ["wan1.3b-480"], ["mag"],
                       {"mag": dict(alone=every, by_dense_steps={"0.1": every, "0.2": every}, source="new")}, True)
    rows = {(r["config"], r["cache"]): r for r in served}
    assert set(rows) == {(c, k) for c in ("dense", "balanced", "fast") for k in ("none", "mag")}
    for config in ("balanced", "fast"):
        assert rows[config, "mag"]["n_dense_steps"] == 0 and rows[config, "mag"]["n_skipped_steps"] == 50
        assert rows[config, "mag"]["total_s"] == pytest.approx(50 * rows[config, "mag"]["skipped_s_per_step"])
    with pytest.raises(ValueError, match="hunyuan-720 is not in the timings"):
        recompose(dict(records=records), ["hunyuan-720"], ["mag"], {}, False)
    spec = importlib.util.spec_from_file_location("bench_step_cache", ROOT / "scripts" / "bench_step_cache.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "timings.json").write_text(json.dumps(dict(records=records, command="an earlier run")))
    (tmp_path / "schedules.json").write_text(json.dumps({"mag": schedules["mag"]}))
    script.main(["--timings", str(tmp_path / "timings.json"), "--schedules", str(tmp_path / "schedules.json"),
                 "--caches", "mag", "--cache-in-warmup", "--out", str(tmp_path / "new")])
    text = (tmp_path / "new" / "step_cache_tiny.md").read_text()
    assert "Composed without a GPU from the step times measured by `an earlier run`" in text
    assert "inside our dense warm-up (cache_in_warmup)" in text and "| balanced | mag |" in text


def test_tiny_run_serving_inside_the_warmup():
    """--cache-in-warmup: a schedule that serves every step is composed with no warm-up step computed."""
    every = [True] * 20
    schedules = {"first-block": dict(alone=every, by_dense_steps={"0.1": every, "0.2": every}, source="test")}
    records = run_model("wan1.3b-480", ["first-block"], schedules, "eager", 1, True, False, CPU, torch.float32,
                        ProgressLog(), cache_in_warmup=True)
    rows = {(r["config"], r["cache"]): r for r in records}
    for config in ("balanced", "fast"):
        assert rows[config, "first-block"]["n_dense_steps"] == 0 and rows[config, "first-block"]["n_skipped_steps"] == 50
        assert rows[config, "none"]["n_dense_steps"] > 0 and rows[config, "first-block"]["cache_in_warmup"]


def test_compiled_blocks_run_under_the_forced_caches():
    # each block's forward is compiled, so the caches' hooks wrap the compiled blocks (a fullgraph
    # compile of the block calls would trace the hooks and fail)
    every_third = [i % 3 == 2 for i in range(20)]
    schedules = {"mag": dict(alone=every_third, by_dense_steps={"0.2": every_third}, source="test")}
    records = run_model("wan1.3b-480", ["mag"], schedules, "compiled", 1, True, False, CPU, torch.float32, ProgressLog())
    rows = {(r["config"], r["cache"]): r for r in records}
    assert all(r["baseline"] == "compiled" for r in records)
    assert rows["balanced", "mag"]["skipped_s_per_step"] < rows["balanced", "mag"]["computed_s_per_step"]
