"""dit_sparse: training-free per-head sparse attention for diffusion transformers."""

__version__ = "0.1.0"
