"""Demo pipeline builders: tokenizer, tiny pipeline from a prompt, save/load, and the training script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from dit_sparse import generation
from dit_sparse.demo import SIZES, VOCABULARY, build_pipeline, build_tokenizer
from dit_sparse.demo.components import save_pipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving left on a blue background"
CALL = dict(negative_prompt="", num_frames=9, height=64, width=64, num_inference_steps=2, max_sequence_length=32,
            output_type="np")


def encode(tokenizer, prompts, max_length=12):
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                     return_attention_mask=True, return_tensors="pt")


def test_tokenizer_follows_umt5_conventions():
    tokenizer = build_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == len(VOCABULARY) + 3
    out = encode(tokenizer, [PROMPT, "A RED, circle!", "", "a teal circle"])
    ids, mask = out.input_ids, out.attention_mask
    assert ids.shape == (4, 12) and mask.shape == (4, 12)
    words = PROMPT.split()
    assert ids[0, : len(words)].tolist() == tokenizer.convert_tokens_to_ids(words)
    assert ids[0, len(words)] == 1 and (ids[0, len(words) + 1 :] == 0).all()
    assert mask[0].tolist() == [1] * (len(words) + 1) + [0] * (12 - len(words) - 1)
    assert ids[1, :4].tolist() == tokenizer.convert_tokens_to_ids(["a", "red", "circle", "</s>"])  # case, punctuation
    assert ids[2, 0] == 1 and mask[2].sum() == 1  # the empty prompt is just </s>
    assert ids[3, 1] == 2  # unknown word
    assert 2 not in ids[0] and len(set(ids[0, : len(words)].tolist())) == len(set(words))
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == PROMPT
    truncated = encode(tokenizer, [PROMPT], max_length=5).input_ids[0]
    assert truncated.tolist() == tokenizer.convert_tokens_to_ids(words[:4]) + [1]


def tiny_pipeline():
    pipe = build_pipeline("tiny", seed=0)
    with torch.no_grad():  # the fresh transformer predicts zero; give it an output that depends on its inputs
        torch.nn.init.normal_(pipe.transformer.proj_out.weight, std=0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt=PROMPT):
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **CALL).frames


def test_tiny_pipeline_runs_from_a_prompt_and_round_trips(tmp_path):
    pipe = tiny_pipeline()
    video = run(pipe)
    assert video.shape == (1, 9, 64, 64, 3) and video.min() >= 0 and video.max() <= 1
    assert not np.array_equal(video, run(pipe, "a green star rotating on a striped white background"))
    save_pipeline(pipe, tmp_path / "fp32", dtype=torch.float32)
    loaded = WanPipeline.from_pretrained(tmp_path / "fp32", dtype=torch.float32)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler" and loaded.scheduler.config.flow_shift == 3.0
    np.testing.assert_allclose(run(loaded), video, rtol=0, atol=1e-5)  # bit-exact on some CPUs, not all
    save_pipeline(pipe, tmp_path / "fp16")  # default: fp16 weights; `pipe` itself stays float32
    assert pipe.transformer.dtype == torch.float32
    half = WanPipeline.from_pretrained(tmp_path / "fp16", dtype=torch.float32)
    half.set_progress_bar_config(disable=True)
    with torch.no_grad():  # round the weights as the fp16 files did (buffers such as RoPE's are not saved)
        for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
            for param in module.parameters():
                param.copy_(param.half().float())
    np.testing.assert_allclose(run(half), run(pipe), rtol=0, atol=1e-5)


def test_demo_size_fits_the_bundle_limits(tmp_path):
    pipe = build_pipeline("demo")
    transformer = pipe.transformer.config
    assert transformer.num_layers >= 8 and transformer.num_attention_heads >= 4 and transformer.attention_head_dim == 64
    assert transformer.text_dim == pipe.text_encoder.config.d_model
    assert pipe.vae.config.temperal_downsample == [False, True, True]
    assert pipe.vae.config.z_dim == transformer.in_channels == SIZES["demo"]["vae"]["z_dim"]
    total = save_pipeline(pipe, tmp_path)
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert total <= 40e6 and max(f.stat().st_size for f in files) <= 15 * 2**20


def test_training_script_smoke_run_gives_a_loadable_pipeline(tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_demo_model.py"), "--size", "tiny", "--stage", "all", "--steps", "2",
           "--num-frames", "9", "--resolution", "64", "--out", str(out), "--device", "cpu"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[transformer] step 2" in result.stdout and "saved" in result.stdout
    settings = json.loads((out / generation.DEMO_SETTINGS).read_text())
    assert (settings["num_frames"], settings["height"], settings["width"]) == (9, 64, 64) and "cpu" not in settings
    pipe = WanPipeline.from_pretrained(out, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    z_dim = pipe.vae.config.z_dim
    assert len(pipe.vae.config.latents_std) == z_dim and pipe.vae.config.latents_std != [1.0] * z_dim
    assert pipe.transformer.proj_out.weight.abs().sum() > 0  # trained away from its zero init
    assert pipe.transformer.dtype == torch.float32
    video = run(pipe)
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()


@pytest.mark.parametrize("size", ["nope"])
def test_unknown_size_is_an_error(size):
    with pytest.raises(ValueError, match="demo"):
        build_pipeline(size)
