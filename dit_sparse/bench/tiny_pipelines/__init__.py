"""Tiny stock diffusers pipelines of every supported family, built offline from config
arguments with random weights (fixed seeds), for the family tests and the GPU check.

Each family's module has `build()` -> the pipeline and `call_kwargs()` -> the arguments of one
generation with precomputed prompt embeddings and output_type="latent" (fixed generators)."""

from __future__ import annotations

import importlib
from types import ModuleType


def tiny_pipeline(family: str) -> ModuleType:
    """The module of `family`'s tiny pipeline (its `ModelFamily.name`): `build`, `call_kwargs`."""
    return importlib.import_module(f"{__name__}.{family}")
