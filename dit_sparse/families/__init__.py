"""The model families dit_sparse supports, and how to find the one of a transformer."""

from __future__ import annotations

from .base import ModelFamily
from .cogvideox import COGVIDEOX
from .flux import FLUX
from .hunyuan_video import HUNYUAN_VIDEO
from .ltx import LTX
from .qwenimage import QWENIMAGE
from .sd3 import SD3
from .wan import WAN

FAMILIES: tuple[ModelFamily, ...] = (WAN, COGVIDEOX, HUNYUAN_VIDEO, LTX, FLUX, SD3, QWENIMAGE)


def find_family(transformer) -> ModelFamily | None:
    return next((f for f in FAMILIES if f.matches(transformer)), None)


def dropin_pipelines() -> dict[str, str]:
    """Every drop-in pipeline class name -> the stock diffusers pipeline class it extends."""
    return {name: stock for f in FAMILIES for name, stock in f.pipelines.items()}


def context_parallel_families() -> str:
    """The families whose processors run sparse under Ulysses context parallelism, by title."""
    titles = [f.title for f in FAMILIES if f.context_parallel]
    return ", ".join(titles[:-1]) + f" and {titles[-1]}" if len(titles) > 1 else "".join(titles)


def supported() -> str:
    """One line listing the supported families and their transformer classes."""
    return "; ".join(f"{f.name} ({', '.join(f.transformer_classes)})" for f in FAMILIES)
