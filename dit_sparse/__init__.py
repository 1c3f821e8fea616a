"""dit_sparse: training-free per-head sparse attention for diffusion transformers."""

from .api import SparseAttention, UnsupportedModelError, apply, remove
from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .pattern_bank import PatternBank
from .plan_cache import PlanCache
from .profiling import HeadPlan, profile_heads
from .stats import PlanStats, SparseStats

__version__ = "0.1.0"

__all__ = [
    "HeadPlan",
    "PatternBank",
    "PlanCache",
    "PlanStats",
    "SparseAttention",
    "SparseAttentionConfig",
    "SparseStats",
    "TokenGrid",
    "UnsupportedModelError",
    "apply",
    "profile_heads",
    "remove",
]
