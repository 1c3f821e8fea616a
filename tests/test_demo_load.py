"""The bundled demo model from Python: dit_sparse.demo.load_pipeline and call_arguments."""

import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from dit_sparse import generation
from dit_sparse.demo import call_arguments, load_pipeline


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(device="cpu")


def test_load_pipeline_gives_the_demo_wan_pipeline(pipe):
    assert isinstance(pipe, WanPipeline)
    assert pipe.transformer.dtype == torch.float32 and pipe.transformer.device.type == "cpu"
    assert pipe.transformer.config.num_layers == 8  # the bundled model, not a random tiny one


def test_load_pipeline_takes_a_dtype_name():
    assert load_pipeline(device="cpu", dtype="bf16").transformer.dtype == torch.bfloat16


def test_loading_shows_no_progress_bars_and_restores_the_setting(capfd):
    load_pipeline(device="cpu")
    err = capfd.readouterr().err
    assert "Loading" not in err and "%|" not in err
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()


def test_call_arguments_are_the_training_settings():
    args = call_arguments("a red circle moving left on a blue background", "cpu")
    assert args == dict(prompt="a red circle moving left on a blue background", num_frames=33, height=256, width=256,
                        num_inference_steps=20, guidance_scale=5.0, max_sequence_length=32)
    defaults = generation.DEMO_DEFAULTS
    assert (args["num_frames"], args["height"], args["num_inference_steps"]) == (
        defaults["num_frames"], defaults["height"], defaults["steps"])
    assert call_arguments("x", num_inference_steps=4, output_type="pil")["num_inference_steps"] == 4


def test_call_arguments_drive_the_pipeline(pipe):
    assert set(call_arguments("x")) <= set(inspect.signature(pipe.__call__).parameters)
    args = call_arguments("a red circle moving left on a blue background", num_inference_steps=1, num_frames=5,
                          height=64, width=64, generator=torch.Generator().manual_seed(0))
    frames = pipe(**args).frames[0]
    assert frames.shape == (5, 64, 64, 3) and np.isfinite(frames).all()


def test_a_demo_model_carries_its_sizes_per_device(tmp_path):
    """A demo model's settings file gives its training size on the GPU and its smaller CPU size on the CPU;
    without one, the bundled model keeps DEMO_DEFAULTS and other models get no defaults."""
    settings = dict(num_frames=33, height=512, width=512, steps=20, guidance_scale=5.0, max_sequence_length=32,
                    cpu=dict(height=256, width=256))
    (tmp_path / generation.DEMO_SETTINGS).write_text(json.dumps(settings))
    gpu, cpu = generation.demo_defaults(tmp_path, "cuda"), generation.demo_defaults(tmp_path, "cpu")
    assert (gpu["height"], gpu["width"], cpu["height"], cpu["width"]) == (512, 512, 256, 256)
    assert gpu["num_frames"] == cpu["num_frames"] == 33 and "cpu" not in gpu and "cpu" not in cpu
    assert generation.demo_defaults(tmp_path / "elsewhere", "cpu") == {}
    bundled = generation.demo_defaults(generation.DEMO_MODEL, "cuda")
    if not (generation.DEMO_MODEL / generation.DEMO_SETTINGS).exists():
        assert bundled == generation.DEMO_DEFAULTS
