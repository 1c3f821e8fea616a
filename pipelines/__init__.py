"""Drop-in pipelines: the stock diffusers pipelines with sparse self-attention
(installed as `dit_sparse.pipelines`).

One `Sparse<Family>Pipeline` per entry of a family's `pipelines` (dit_sparse/families), made on
first use from the stock class it names, so that `from dit_sparse.pipelines import
SparseWanPipeline` imports diffusers' Wan pipeline only (and not Flux's or Qwen-Image's, whose
modules pull in image processors, and with them transformers' warnings about a missing
torchvision).
"""

from __future__ import annotations

from importlib import import_module

from dit_sparse.families import dropin_pipelines

from .sparse_pipeline import sparse_pipeline

__all__ = sorted(dropin_pipelines())


def __getattr__(name: str):
    """A Sparse* pipeline class, made from its stock class on first use (then a module attribute)."""
    stock = dropin_pipelines().get(name)
    if stock is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = sparse_pipeline(getattr(import_module("diffusers"), stock), name)
    globals()[name] = cls
    return cls


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
