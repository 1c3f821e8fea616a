"""dit_sparse: training-free per-head sparse attention for diffusion transformers."""

from .config import SparseAttentionConfig
from .geometry import TokenGrid

__version__ = "0.1.0"

__all__ = ["SparseAttentionConfig", "TokenGrid"]
