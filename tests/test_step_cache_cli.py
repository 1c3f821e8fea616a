"""--cache on `dit-sparse generate` and `compare`, `dit-sparse calibrate`, and MagCache's ratios:
calibrated through diffusers' own hook, bundled for the demo model, required for any other."""

import json

import pytest
from diffusers import WanTransformer3DModel

from dit_sparse import calibrate_mag_cache, cli, mag_ratios, step_cache
from dit_sparse.generation import DEMO_MODEL

import step_cache_checks as sc
from test_cli import model_dir, run  # noqa: F401 (model_dir is a fixture)
from test_cli_imports import _imported_after

SMALL = ["--num-frames", "9", "--height", "64", "--width", "64", "--max-sequence-length", "16", "--device", "cpu"]


def test_generate_with_a_cache_records_the_skipped_steps(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code, stdout, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "6",
                          "--cache", "taylorseer", "--output", out)
    assert code == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["cache"] == "taylorseer" and meta["stats"]["skipped_steps"]["transformer"]  # TaylorSeer skips step 3
    assert "step cache taylorseer" in stdout and "the step cache skipped" in stdout
    code, _, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "2",
                     "--preset", "dense", "--cache", "first-block", "--output", out)
    assert code == 0 and json.loads(out.with_suffix(".json").read_text())["stats"] is None


def test_compiled_generation_with_a_cache(model_dir, tmp_path, capsys):
    # diffusers' compile_repeated_blocks would trace the cache's hooks, which break fullgraph
    out = tmp_path / "clip.gif"
    code, stdout, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "6",
                            "--cache", "taylorseer", "--compile", "--output", out)
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["compiled"] and meta["stats"]["skipped_steps"]["transformer"] and "compile time" in stdout


def test_mag_cache_without_ratios_and_stray_ratios_are_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "2",
                       "--cache", "mag", "--output", out)
    assert code == 2 and "MagCache needs magnitude ratios" in err and "dit-sparse calibrate" in err
    code, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "2",
                       "--mag-ratios", tmp_path / "r.json", "--output", out)
    assert code == 2 and "add --cache mag" in err


def test_cache_in_warmup_reaches_the_config_and_needs_a_cache(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "2",
                       "--cache-in-warmup", "--output", out)
    assert code == 2 and "add --cache" in err
    code, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "4",
                       "--cache", "taylorseer", "--cache-in-warmup", "--output", out)
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["config"]["cache_in_warmup"] is True


def test_calibrate_then_generate_with_the_ratios(model_dir, tmp_path, capsys):
    ratios = tmp_path / "ratios.json"
    code, stdout, _ = run(capsys, "calibrate", "--model", model_dir, "--prompt", "a red circle", "--seeds", "0,1",
                          *SMALL, "--steps", "5", "--output", ratios)
    assert code == 0 and f"--mag-ratios {ratios}" in stdout
    record = json.loads(ratios.read_text())
    assert len(record["mag_ratios"]) == 5 == record["num_inference_steps"] and record["mag_ratios"][0] == 1.0
    assert set(record["by_branch"]) == {"cond", "uncond"} and record["calibration"]["seeds"] == [0, 1]
    assert record["transformer"] == "WanTransformer3DModel" and "path" not in record["calibration"]
    out = tmp_path / "clip.gif"
    code, _, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, "--steps", "8",
                     "--cache", "mag", "--mag-ratios", ratios, "--output", out)
    assert code == 0


def test_compare_with_a_cache_adds_the_cache_alone_and_the_combinations(model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, _ = run(capsys, "compare", "--model", model_dir, "--prompt", "a red circle", "--presets",
                          "dense,balanced", "--cache", "first-block", "--out", out, "--no-warmup", *SMALL, "--steps", "3")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["summary"]) == ["dense", "dense+first-block", "balanced+first-block"]
    assert report["meta"]["caches"] == ["first-block"] and "balanced+first-block" in report["configs"]
    assert "Step caches: first-block" in (out / "report.md").read_text()


def test_calibration_runs_dense_through_diffusers_hook_and_restores_the_pipeline():
    import dit_sparse

    pipe = sc.FAMILIES["wan"].build()
    handle = dit_sparse.apply(pipe, dit_sparse.SparseAttentionConfig(dense_steps=0, block_size=16))
    result = calibrate_mag_cache(pipe, [sc.call_kwargs("wan")])
    assert len(result["mag_ratios"]) == sc.STEPS and set(result["by_branch"]) == {"cond", "uncond"}
    assert handle.enabled and handle.stats().sparse_calls == 0  # ran dense
    assert pipe.transformer._cache_config is None
    with pytest.raises(ValueError, match="same num_inference_steps"):
        calibrate_mag_cache(pipe, [sc.call_kwargs("wan"), sc.call_kwargs("wan", num_inference_steps=4)])


def test_the_demo_model_has_bundled_ratios_and_other_models_none():
    demo = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(DEMO_MODEL / "transformer"))
    ratios = mag_ratios.bundled(demo)
    assert ratios is not None and len(ratios) == 20 and ratios[0] == 1.0
    config = step_cache.resolve("mag", demo)  # what apply(demo_pipe, cache="mag") enables
    assert config.mag_ratios.tolist() == pytest.approx(ratios) and config.num_inference_steps == 20
    assert mag_ratios.bundled(sc.FAMILIES["wan"].build().transformer) is None


def test_the_parsers_cache_names_are_the_packages():
    assert cli.CACHE_CHOICES == step_cache.CACHE_NAMES


def test_calibrate_help_imports_no_torch():
    code = "from dit_sparse.cli import main\ntry:\n    main(['calibrate', '--help'])\nexcept SystemExit:\n    pass"
    assert _imported_after(code)[0] == []
