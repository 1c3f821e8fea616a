"""SparseWanPipeline: diffusers' WanPipeline with sparse self-attention."""

from diffusers import WanPipeline

from .sparse_pipeline import sparse_pipeline

SparseWanPipeline = sparse_pipeline(WanPipeline, "SparseWanPipeline")
