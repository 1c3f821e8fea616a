"""SparseQwenImagePipeline: diffusers' QwenImagePipeline with sparse self-attention."""

from diffusers import QwenImagePipeline

from .sparse_pipeline import sparse_pipeline

SparseQwenImagePipeline = sparse_pipeline(QwenImagePipeline, "SparseQwenImagePipeline")
