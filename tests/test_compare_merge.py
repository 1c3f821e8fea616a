"""Merging comparison reports of different seeds gives the report of one run over all seeds."""

import json

import numpy as np
import pytest

from dit_sparse.cli import main
from dit_sparse.compare import merge_reports
from dit_sparse.demo.components import build_pipeline

from dit_sparse.study import quality_study

SMALL = ["--num-frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--max-sequence-length", "8",
         "--device", "cpu", "--presets", "dense,balanced", "--dense-steps", "0", "--no-warmup"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    build_pipeline("tiny").save_pretrained(root / "model")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle moving left\na green star rotating\n")
    out = {}
    for seeds in ("0", "1", "0,1"):
        folder = root / seeds.replace(",", "_")
        assert main(["compare", "--model", str(root / "model"), "--prompts", str(prompts), "--seeds", seeds,
                     "--out", str(folder), *SMALL]) == 0
        out[seeds] = (folder, json.loads((folder / "report.json").read_text()))
    return out


def _key(run):
    return run["preset"], run["prompt_index"], run["seed"]


def test_merged_report_equals_one_run_over_all_seeds(reports):
    folder, _ = reports["0"]
    merged = merge_reports([reports["0"][1], reports["1"][1]], folder, meta=dict(command="merged"))
    whole = reports["0,1"][1]
    assert merged["meta"]["seeds"] == [0, 1] and merged["meta"]["command"] == "merged"
    assert [_key(r) for r in merged["runs"]] == [_key(r) for r in whole["runs"]]
    for a, b in zip(merged["runs"], whole["runs"]):
        assert a["psnr"] == pytest.approx(b["psnr"]) and a["ssim"] == pytest.approx(b["ssim"])
    assert merged["summary"]["balanced"]["runs"] == 4
    assert merged["summary"]["balanced"]["psnr"] == pytest.approx(whole["summary"]["balanced"]["psnr"])
    assert json.loads((folder / "report.json").read_text())["meta"]["seeds"] == [0, 1]
    assert "| balanced |" in (folder / "report.md").read_text()


def test_merge_refuses_overlapping_seeds_and_other_configs(reports, tmp_path):
    report = reports["0"][1]
    with pytest.raises(ValueError, match="different seeds"):
        merge_reports([report, reports["0,1"][1]], tmp_path)
    other = dict(report, configs={"balanced": {}})
    with pytest.raises(ValueError, match="prompts and configs"):
        merge_reports([report, other], tmp_path)


def test_seed_groups_round_robin():
    assert quality_study.seed_groups([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert quality_study.seed_groups([0, 1], 4) == [[0], [1]]


def test_paired_loss_statistics():
    runs = []
    for seed, (fresh, cached) in enumerate([(40.0, 39.0), (30.0, 30.5), (35.0, 20.0), (20.0, 26.0)]):
        runs += [dict(prompt_index=0, seed=seed, preset="refresh_1", psnr=fresh),
                 dict(prompt_index=0, seed=seed, preset="refresh_5", psnr=cached)]
    stats = quality_study.paired_loss(dict(runs=runs), "refresh_1", "refresh_5")  # diffs 1, -0.5, 15, -6
    assert stats["clips"] == 4 and stats["mean"] == pytest.approx(2.375) and stats["median"] == pytest.approx(0.25)
    assert stats["worse_by_3db"] == 1 and stats["better_by_3db"] == 1
    assert stats["mean_without_3db_moves"] == pytest.approx(0.25)
    assert stats["sem"] == pytest.approx(np.std([1, -0.5, 15, -6], ddof=1) / 2)
