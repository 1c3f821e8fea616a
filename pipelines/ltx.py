"""SparseLTXPipeline: diffusers' LTXPipeline with sparse self-attention."""

from diffusers import LTXPipeline

from .sparse_pipeline import sparse_pipeline

SparseLTXPipeline = sparse_pipeline(LTXPipeline, "SparseLTXPipeline")
