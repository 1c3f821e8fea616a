"""SparseCogVideoXPipeline: diffusers' CogVideoXPipeline with sparse self-attention."""

from diffusers import CogVideoXPipeline

from .sparse_pipeline import sparse_pipeline

SparseCogVideoXPipeline = sparse_pipeline(CogVideoXPipeline, "SparseCogVideoXPipeline")
