"""The bundled demo: a small Wan text-to-video model trained on procedural clips of moving shapes.

`load_pipeline()` loads the trained model and `call_arguments(prompt)` gives the call it needs
(`model`); `clips` renders the captioned training clips; `scenes` renders richer ones (several
objects, textures, camera motion, occlusion) for issue 18's demo2; `components` builds the pipeline
(tokenizer, text encoder, VAE, transformer, scheduler) that `scripts/train_demo_model.py` trains.
"""

from .clips import SHEET_PROMPTS, STUDY_PROMPTS, VOCABULARY, ClipSpec, caption, render_clips, sample_spec, sample_specs
from .components import SIZES, build_pipeline, build_tokenizer
from .model import call_arguments, load_pipeline
from .scenes import SceneObject, SceneSpec, caption_scene, render_scenes, sample_scene, sample_scenes

__all__ = [
    "SHEET_PROMPTS",
    "SIZES",
    "STUDY_PROMPTS",
    "VOCABULARY",
    "ClipSpec",
    "SceneObject",
    "SceneSpec",
    "build_pipeline",
    "build_tokenizer",
    "call_arguments",
    "caption",
    "caption_scene",
    "load_pipeline",
    "render_clips",
    "render_scenes",
    "sample_scene",
    "sample_scenes",
    "sample_spec",
    "sample_specs",
]
