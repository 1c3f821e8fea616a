"""Drop-in pipelines: the stock diffusers pipelines with sparse self-attention
(installed as `dit_sparse.pipelines`).

Each class lives in its family's module and is imported on first use, so that
`from dit_sparse.pipelines import SparseWanPipeline` imports diffusers' Wan pipeline only (and not
Flux's or Qwen-Image's, whose modules pull in image processors, and with them transformers'
warnings about a missing torchvision).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_MODULES = {  # class name -> the module of this package that defines it
    "SparseCogVideoXPipeline": "cogvideox",
    "SparseFluxPipeline": "flux",
    "SparseHunyuanVideoPipeline": "hunyuan_video",
    "SparseLTXPipeline": "ltx",
    "SparseQwenImagePipeline": "qwenimage",
    "SparseSD3Pipeline": "sd3",
    "SparseWanPipeline": "wan",
}

__all__ = sorted(_MODULES)

if TYPE_CHECKING:
    from .cogvideox import SparseCogVideoXPipeline
    from .flux import SparseFluxPipeline
    from .hunyuan_video import SparseHunyuanVideoPipeline
    from .ltx import SparseLTXPipeline
    from .qwenimage import SparseQwenImagePipeline
    from .sd3 import SparseSD3Pipeline
    from .wan import SparseWanPipeline


def __getattr__(name: str):
    """A Sparse* pipeline class, imported from its family's module on first use."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
