"""The trained demo model bundled with the package (dit_sparse/assets/demo_model), from Python.

    from dit_sparse.demo import call_arguments, load_pipeline

    pipe = load_pipeline()                                   # a stock diffusers WanPipeline
    frames = pipe(**call_arguments("a red circle moving right on a blue background", pipe.device)).frames[0]

The model was trained at one clip size, so it needs `call_arguments` (WanPipeline's own defaults
ask for 81 frames at 480x832 and 512 text tokens).
"""

from __future__ import annotations

import torch

from .. import generation as gen

# GenerationRequest field -> WanPipeline call argument
_CALL_NAMES = {"num_frames": "num_frames", "height": "height", "width": "width", "steps": "num_inference_steps",
               "guidance_scale": "guidance_scale", "max_sequence_length": "max_sequence_length"}


def load_pipeline(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
    """The bundled demo WanPipeline on `device` (default: the GPU if there is one, else the CPU) in
    `dtype` (a torch dtype or "bf16"/"fp16"/"fp32"; default: bfloat16 on a GPU, float32 on the CPU)."""
    device = gen.pick_device(None)[0] if device is None else str(device)
    if not isinstance(dtype, torch.dtype):
        dtype = gen.pick_dtype(dtype, device)
    return gen.load_pipeline(gen.DEMO_MODEL, dtype=dtype, device=device)


def call_arguments(prompt: str, device: str | torch.device | None = None, **overrides) -> dict:
    """The pipeline call for `prompt` at the demo model's training settings (`generation.demo_defaults`:
    its clip size, on the CPU a smaller one it was also trained at; 32 text tokens, as longer
    zero-padded text shifts its cross-attention; 20 steps, guidance 5.0) for a pipeline on `device`
    (default: where `load_pipeline` puts it).
    `overrides` are WanPipeline call arguments (e.g. num_inference_steps=10, generator=...)."""
    device = gen.pick_device(None)[0] if device is None else str(device)
    defaults = gen.demo_defaults(gen.DEMO_MODEL, device)
    arguments = {_CALL_NAMES[name]: value for name, value in defaults.items()}
    return dict(arguments, prompt=prompt, **overrides)
