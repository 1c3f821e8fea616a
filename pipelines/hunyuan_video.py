"""SparseHunyuanVideoPipeline: diffusers' HunyuanVideoPipeline with sparse self-attention."""

from diffusers import HunyuanVideoPipeline

from .sparse_pipeline import sparse_pipeline

SparseHunyuanVideoPipeline = sparse_pipeline(HunyuanVideoPipeline, "SparseHunyuanVideoPipeline")
