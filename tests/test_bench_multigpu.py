"""scripts/bench_multigpu.py: its arguments and checks, and its whole code path with --tiny on
two CPU ranks (gloo), started as torchrun starts them (RANK, WORLD_SIZE, MASTER_* variables)."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_multigpu as bench  # noqa: E402

RANKS = 2


def test_arguments():
    args = bench.parse_args([])
    assert (args.out, args.config, args.repeats, args.tiny) == ("docs/results", "svg", 3, False)
    assert bench.parse_args(["--config", "balanced", "--tiny"]).config == "balanced"
    for bad in (["--config", "sparse"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_outside_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="runs under torchrun"):
        bench.setup(tiny=True)


def test_heads_and_tokens_must_divide_by_the_ranks():
    bench.check_divisible(12, 75600, 2)  # Wan2.1-1.3B at 720p on 2 GPUs
    with pytest.raises(ValueError, match="12 heads and 75600 tokens must both divide by the 5 ranks"):
        bench.check_divisible(12, 75600, 5)


def test_compare_and_plan_agreement():
    expected = torch.ones(1000)
    assert bench.compare(expected + 1e-3, expected)["equal"]
    far = bench.compare(expected * 1.1, expected)
    assert not far["equal"] and far["rel_l2"] == pytest.approx(0.1) and far["max_abs"] == pytest.approx(0.1)
    whole = {(3, 0, 0, 4): torch.tensor([[1, 2, 3, 4]])}
    sharded = {(3, 0, 0, 2): torch.tensor([[1, 2]]), (3, 0, 2, 4): torch.tensor([[3, 0]])}
    assert bench.plan_agreement(sharded, whole) == 0.75


def rank_main(rank, port, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(RANKS), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    bench.main(["--tiny", "--repeats", "1", "--out", out])


def test_tiny_run_on_two_cpu_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(port, str(tmp_path)), nprocs=RANKS)
    record = json.loads((tmp_path / "multigpu_tiny.json").read_text())
    assert list(record["runs"]) == ["1gpu-dense", "1gpu-sparse", "2gpu-dense", "2gpu-sparse"]
    assert record["ranks"] == RANKS and record["tiny"] and record["tokens"] % RANKS == 0
    assert record["runs"]["1gpu-dense"]["speedup_vs_1gpu_dense"] == 1.0
    sparse = record["runs"]["2gpu-sparse"]
    assert 0 < sparse["mean_density"] < 0.9 and sparse["n_dense_steps"] == record["sparse_settings"]["dense_steps"]
    assert sparse["total_s"] == pytest.approx(  # dense steps at the warm-up step through our processors
        sparse["n_dense_steps"] * sparse["warmup_s_per_step"] + sparse["n_profile_steps"] * sparse["profile_s_per_step"]
        + sparse["n_cached_steps"] * sparse["cached_s_per_step"])
    for comparison in ("2gpu-sparse vs 1gpu-sparse", "2gpu-dense vs 1gpu-dense"):
        for c in record["equality"][comparison].values():
            assert c["equal"] and c["rel_l2"] < 1e-5  # float32 on the CPU: equal to rounding
    assert record["plan_agreement"] == 1.0
    assert "| 2gpu-sparse |" in (tmp_path / "multigpu_tiny.md").read_text()
