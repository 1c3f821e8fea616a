"""The bundled demo: a small Wan text-to-video model trained on procedural clips of moving shapes.

`load_pipeline()` loads the trained model and `call_arguments(prompt)` gives the call it needs
(`model`); `clips` renders the captioned training clips; `components` builds the pipeline
(tokenizer, text encoder, VAE, transformer, scheduler) that `scripts/train_demo_model.py` trains.
"""

from .clips import SHEET_PROMPTS, STUDY_PROMPTS, VOCABULARY, ClipSpec, caption, render_clips, sample_spec, sample_specs
from .components import SIZES, build_pipeline, build_tokenizer
from .model import call_arguments, load_pipeline

__all__ = [
    "SHEET_PROMPTS",
    "SIZES",
    "STUDY_PROMPTS",
    "VOCABULARY",
    "ClipSpec",
    "build_pipeline",
    "build_tokenizer",
    "call_arguments",
    "caption",
    "load_pipeline",
    "render_clips",
    "sample_spec",
    "sample_specs",
]
