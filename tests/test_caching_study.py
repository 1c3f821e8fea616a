"""dit_sparse/study/caching_study.py: the compare commands it runs and the summary it makes of their runs."""


import pytest

from dit_sparse.study import caching_study as study


def test_one_compare_per_setting_and_seed_group(tmp_path):
    commands = study.compare_commands(tmp_path / "p.txt", ["0,2", "1,3"], tmp_path)
    assert len(commands) == 2 * len(study.SETTINGS)
    cmd = commands["r5m_1_3"]
    assert cmd[:2] == ["dit-sparse", "compare"] and cmd[cmd.index("--seeds") + 1] == "1,3"
    assert cmd[cmd.index("--refresh-every") + 1] == "5" and cmd[cmd.index("--recall") + 1] == "0.97"
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "r5m_1_3")


def test_summary_pairs_the_same_clips():
    psnr = {"r1": [40.0, 30.0], "r5": [39.0, 31.0], "r1m": [45.0, 44.0], "r5m": [45.0, 43.0]}
    runs = {}
    for setting, values in psnr.items():
        for seed, value in enumerate(values):  # one run folder per seed, listed in any order
            runs[f"{setting}_{seed}"] = dict(runs=[
                dict(preset="dense", prompt_index=0, seed=seed, psnr="inf", mean_density=1.0),
                dict(preset="balanced", prompt_index=0, seed=seed, psnr=value, mean_density=0.5 + seed / 10),
            ])
    summary = study.summarise(runs)
    assert summary["settings"]["r5"]["psnr"] == pytest.approx(35.0)
    assert summary["settings"]["r5"]["mean_density"] == pytest.approx(0.55)
    assert summary["pairs"]["r1-r5"]["mean"] == pytest.approx(0.0)  # +1 and -1
    assert summary["pairs"]["r1m-r5m"]["mean"] == pytest.approx(0.5)
    assert summary["pairs"]["r1-r1m"]["clips"] == 2
    md = study.markdown(summary, "cmd", ["a", "b"], "gpu")
    assert "| r1-r5 | 0.00 |" in md and "- `b`" in md
