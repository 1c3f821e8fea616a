"""The dit-sparse command on a tiny Wan pipeline saved to a temporary folder (tokenizer and text
encoder built locally, nothing from the hub)."""

import json
import math
import os
import subprocess
import sys

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from dit_sparse import generation
from dit_sparse.cli import main
from dit_sparse.demo.components import build_pipeline

SMALL = ["--num-frames", "9", "--height", "64", "--width", "64", "--steps", "2", "--max-sequence-length", "16",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_wan")
    build_pipeline("tiny").save_pretrained(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_playable_mp4_and_sidecar(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code, stdout, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle moving left", *SMALL,
                          "--output", out)
    assert code == 0
    frames = read_mp4(out)
    assert frames.shape[0] == 9 and frames.shape[1:3] == (64, 64)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["preset"] == "balanced" and meta["config"]["refresh_every"] == 2
    assert meta["steps"] == 2 and meta["wall_s"] > 0 and meta["transformer_s"] > 0
    assert meta["stats"]["sparse_calls"] > 0  # balanced at 2 steps: no dense warm-up step, so it ran sparse
    assert "wall time" in stdout and "sparsity: mean density" in stdout


def test_a_demo_model_generates_at_its_cpu_size_on_the_cpu(tmp_path, capsys):
    """Without --height/--width a model folder with a demo settings file takes its "cpu" size on the CPU."""
    model = tmp_path / "demo_like"
    build_pipeline("tiny").save_pretrained(model)
    (model / generation.DEMO_SETTINGS).write_text(json.dumps(dict(
        num_frames=5, height=128, width=128, steps=1, guidance_scale=1.0, max_sequence_length=16, cpu=dict(height=32, width=48))))
    out = tmp_path / "clip.mp4"
    code, _, _ = run(capsys, "generate", "--model", model, "--prompt", "x", "--device", "cpu", "--output", out)
    assert code == 0 and read_mp4(out).shape[:3] == (5, 32, 48)
    assert json.loads(out.with_suffix(".json").read_text())["steps"] == 1


def read_mp4(path):
    with imageio.get_reader(path, "ffmpeg") as reader:
        return np.stack([frame for frame in reader])  # list(reader) asks its infinite len()


def test_generate_dense_gif(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code, stdout, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a blue square", *SMALL,
                          "--preset", "dense", "--output", out)
    assert code == 0
    assert iio.imread(out).shape[:3] == (9, 64, 64)
    assert json.loads(out.with_suffix(".json").read_text())["stats"] is None
    assert "sparsity: off" in stdout


def test_compare_writes_every_file(model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "report"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na green star rotating\n")
    code, stdout, _ = run(capsys, "compare", "--model", model_dir, "--prompts", prompts, "--seeds", "0",
                          "--presets", "dense,balanced,fast", "--dense-steps", "0", "--out", out, "--no-warmup", *SMALL)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    expected = {"report.json", "report.md", "side_by_side_prompt0.mp4", "side_by_side_prompt1.mp4",
                "head_kinds_balanced.png", "head_kinds_fast.png", "density_per_layer.png", "speedup_vs_psnr.png"}
    assert expected <= {p.name for p in out.iterdir()}
    assert set(report["files"]["videos"]) | set(report["files"]["plots"]) | {"report.json", "report.md"} == expected
    dense = report["summary"]["dense"]
    assert dense["psnr"] == "inf" or dense["psnr"] > 99
    assert dense["ssim"] == pytest.approx(1.0) and dense["speedup"] == pytest.approx(1.0)
    for preset in ("balanced", "fast"):
        row = report["summary"][preset]
        assert row["runs"] == 2 and 0 < row["mean_density"] <= 1
        assert row["psnr"] == "inf" or math.isfinite(row["psnr"])
    assert report["lpips"]["available"] or report["lpips"]["reason"]
    md = (out / "report.md").read_text()
    assert "| balanced |" in md and "head_kinds_fast.png" in md
    side = read_mp4(out / "side_by_side_prompt0.mp4")
    assert side.shape[0] == 9 and side.shape[2] >= 3 * 64  # dense | balanced | fast
    assert side.shape[1] % 16 == 0 and side.shape[2] % 16 == 0
    assert "resizing" not in caplog.text  # imageio resizes frames that are not multiples of 16, and says so


def test_compare_writes_gif_without_the_mp4_writer(model_dir, tmp_path, capsys, monkeypatch):
    import dit_sparse.media as media

    monkeypatch.setattr(media, "writer_missing",
                        lambda path: "writing MP4 needs the imageio-ffmpeg package" if str(path).endswith(".mp4") else None)
    out = tmp_path / "report"
    code, _, err = run(capsys, "compare", "--model", model_dir, "--prompt", "a red circle", "--seeds", "0",
                       "--presets", "dense,balanced", "--out", out, "--no-warmup", *SMALL)
    assert code == 0 and "written as GIF" in err
    assert iio.imread(out / "side_by_side_prompt0.gif").shape[0] == 9


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "torch" in out and "diffusers" in out and "Wan" in out and "Flux" in out


def _error(capsys, *argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    return err


def test_unsupported_model_family(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    err = _error(capsys, "generate", "--model", tmp_path, "--prompt", "x")
    assert "StableDiffusionPipeline is not a pipeline dit_sparse supports" in err and "Wan (WanPipeline)" in err


def test_missing_folder_and_unreachable_hub_id(tmp_path, capsys, monkeypatch):
    err = _error(capsys, "generate", "--model", tmp_path / "nope", "--prompt", "x")
    assert "does not exist" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, "generate", "--model", "someone/no-such-model-here", "--prompt", "x")
    assert "could not be fetched" in err and "huggingface-cli download someone/no-such-model-here" in err


@pytest.mark.parametrize("argv, needle", [
    (["--height", "60"], "--height 60 does not suit WanPipeline: it must be a positive multiple of 16"),
    (["--num-frames", "10"], "needs 4k+1 frames (e.g. 9 or 13)"),
    (["--preset", "turbo"], "--preset 'turbo' is unknown"),
    (["--refresh-every", "-1"], "refresh_every"),
    (["--dense-steps", "1.5"], "dense_steps"),
    (["--preset", "dense", "--density", "0.3"], "need a sparse preset"),
    (["--output", "x.png"], "makes a video; give a file ending in .mp4 or .gif"),
])
def test_bad_requests(model_dir, tmp_path, capsys, argv, needle):
    base = ["generate", "--model", model_dir, "--prompt", "x", *SMALL, "--output", tmp_path / "o.mp4"]
    err = _error(capsys, *base, *argv)
    assert needle in err


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps 0 must be at least 1"),
    (["--height", "0"], "--height 0 does not suit WanPipeline: it must be a positive multiple of 16"),
    (["--width", "0"], "--width 0 does not suit WanPipeline"),
    (["--num-frames", "0"], "--num-frames 0 does not suit WanPipeline"),
    (["--max-sequence-length", "0"], "--max-sequence-length 0 must be at least 1"),
    (["--fps", "0"], "--fps 0 must be at least 1"),
])
def test_zero_is_refused_not_replaced_by_the_default(model_dir, tmp_path, capsys, argv, needle):
    base = ["generate", "--model", model_dir, "--prompt", "x", *SMALL, "--output", tmp_path / "o.mp4"]
    err = _error(capsys, *base, *argv)
    assert needle in err and not (tmp_path / "o.mp4").exists()


def test_zero_steps_refused_for_the_demo_model_too(tmp_path, capsys):
    """The demo model has its own defaults (generation.DEMO_DEFAULTS); a 0 must not fall back to them."""
    err = _error(capsys, "generate", "--prompt", "x", "--steps", "0", "--device", "cpu", "--output", tmp_path / "o.mp4")
    assert "--steps 0 must be at least 1" in err


def test_bench_error_names_the_program_once(capsys, monkeypatch):
    from dit_sparse.bench import kernels as kernel_benchmark

    seen = {}

    def refuse(args):
        seen.update(vars(args))
        raise ValueError("the kernel benchmark needs a CUDA GPU")

    monkeypatch.setattr(kernel_benchmark, "run", refuse)
    err = _error(capsys, "bench", "--shapes", "wan480")
    assert err.startswith("dit-sparse bench: error: the kernel benchmark needs a CUDA GPU")
    assert seen["command"] == "dit-sparse bench --shapes wan480" and seen["shapes"] == "wan480"


def test_out_of_memory_says_what_to_do(model_dir, tmp_path, capsys, monkeypatch):
    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(WanPipeline, "__call__", oom)
    err = _error(capsys, "generate", "--model", model_dir, "--prompt", "x", *SMALL, "--output", tmp_path / "o.mp4")
    assert "out of memory" in err and "--cpu-offload" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without a GPU")
def test_no_gpu_falls_back_to_cpu_and_bench_refuses(model_dir, tmp_path, capsys):
    args = [a if a != "cpu" else "cuda" for a in SMALL]
    code, _, err = run(capsys, "generate", "--model", model_dir, "--prompt", "x", *args, "--preset", "dense",
                       "--output", tmp_path / "o.mp4")
    assert code == 0 and "falling back to the CPU" in err
    err = _error(capsys, "bench", "--shapes", "wan480")
    assert "needs a CUDA GPU" in err


def test_console_error_has_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "dit_sparse.cli", "generate", "--model", str(tmp_path / "missing"),
                           "--prompt", "x"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_compiled_blocks(model_dir, tmp_path, capsys, monkeypatch):
    """--compile compiles the transformer's blocks (fullgraph) before the generation, which then
    equals the eager one, and says how long compiling took (aot_eager here: Inductor's CPU
    compile would take minutes)."""
    from dit_sparse import generation

    compiled, compile_pipeline = [], generation.compile_pipeline
    monkeypatch.setattr(generation, "compile_pipeline",
                        lambda pipe, hookable=False: compiled.append(pipe) or compile_pipeline(pipe, hookable,
                                                                                               backend="aot_eager"))
    torch._dynamo.reset()
    outputs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"clip{len(flag)}.gif"
        code, stdout, _ = run(capsys, "generate", "--model", model_dir, "--prompt", "a red circle", *SMALL, *flag,
                              "--output", out)
        assert code == 0
        outputs[bool(flag)] = json.loads(out.with_suffix(".json").read_text())
    torch._dynamo.reset()
    assert len(compiled) == 1 and compiled[0].transformer.blocks[0]._compiled_call_impl is not None
    assert "compile time" in stdout and outputs[True]["compiled"] and outputs[True]["compile_s"] > 0
    assert outputs[False]["compile_s"] is None
    assert outputs[True]["stats"]["sparse_calls"] == outputs[False]["stats"]["sparse_calls"] > 0
