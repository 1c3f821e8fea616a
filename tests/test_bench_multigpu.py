"""The multi-GPU benchmark (dit_sparse.bench.multigpu, scripts/bench_multigpu.py): its checks,
its command line, and its whole code path with --tiny on two CPU ranks (gloo) under torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dit_sparse.bench import multigpu

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_multigpu.py"
RANKS = 2


def run_script(*args, env=None, torchrun=False):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS),
              "--master-addr", "127.0.0.1", "--master-port", str(free_port())] if torchrun else [sys.executable]
    return subprocess.run([*prefix, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--config", "sparse"], "invalid choice: 'sparse'"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--tiny"], "runs under torchrun"),
])
def test_command_line_errors(args, message):
    done = run_script(*args)
    assert done.returncode != 0 and message in done.stderr


def test_heads_and_tokens_must_divide_by_the_ranks():
    multigpu.check_divisible(12, 75600, 2)  # Wan2.1-1.3B at 720p on 2 GPUs
    with pytest.raises(ValueError, match="12 heads and 75600 tokens must both divide by the 5 ranks"):
        multigpu.check_divisible(12, 75600, 5)


def test_compare_and_plan_agreement():
    expected = torch.ones(1000)
    assert multigpu.compare(expected + 1e-3, expected)["equal"]
    far = multigpu.compare(expected * 1.1, expected)
    assert not far["equal"] and far["rel_l2"] == pytest.approx(0.1) and far["max_abs"] == pytest.approx(0.1)
    whole = {(3, 0, 0, 4): torch.tensor([[1, 2, 3, 4]])}
    sharded = {(3, 0, 0, 2): torch.tensor([[1, 2]]), (3, 0, 2, 4): torch.tensor([[3, 0]])}
    assert multigpu.plan_agreement(sharded, whole) == 0.75


def test_tiny_run_on_two_cpu_ranks(tmp_path):
    done = run_script("--tiny", "--repeats", "1", "--out", str(tmp_path), torchrun=True,
                      env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "multigpu_tiny.json").read_text())
    assert record["command"] == f"torchrun --nproc-per-node N scripts/bench_multigpu.py --tiny --repeats 1 --out {tmp_path}"
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
    markdown = (tmp_path / "multigpu_tiny.md").read_text()
    assert "| 2gpu-sparse |" in markdown and markdown in done.stdout
