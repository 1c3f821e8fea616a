"""dit_sparse: training-free per-head sparse attention for diffusion transformers.

The public names are imported on first use, so `import dit_sparse` (and `dit-sparse --help`)
does not import torch or diffusers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_MODULES = {  # public name -> the submodule that defines it
    "HeadPlan": "profiling",
    "PatternBank": "pattern_bank",
    "PlanCache": "plan_cache",
    "PlanStats": "stats",
    "PlanStats": "stats",
    "SparseAttention": "api",
    "SparseAttentionConfig": "config",
    "SparseStats": "stats",
    "SparseStats": "stats",
    "StepCacheError": "step_cache",
    "TokenGrid": "geometry",
    "UnsupportedModelError": "api",
    "apply": "api",
    "calibrate_mag_cache": "mag_ratios",
    "profile_heads": "profiling",
    "remove": "api",
}

__all__ = sorted(_MODULES)

if TYPE_CHECKING:
    from .api import SparseAttention, UnsupportedModelError, apply, remove
    from .config import SparseAttentionConfig
    from .geometry import TokenGrid
    from .mag_ratios import calibrate_mag_cache
    from .pattern_bank import PatternBank
    from .plan_cache import PlanCache
    from .profiling import HeadPlan, profile_heads
    from .step_cache import StepCacheError
    from .stats import PlanStats, SparseStats
    from .stats import PlanStats, SparseStats


def __getattr__(name: str):
    """A public name, imported from its submodule on first use."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
