"""SparseFluxPipeline: diffusers' FluxPipeline with sparse self-attention."""

from diffusers import FluxPipeline

from .sparse_pipeline import sparse_pipeline

SparseFluxPipeline = sparse_pipeline(FluxPipeline, "SparseFluxPipeline")
