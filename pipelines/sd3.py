"""SparseSD3Pipeline: diffusers' StableDiffusion3Pipeline with sparse self-attention."""

from diffusers import StableDiffusion3Pipeline

from .sparse_pipeline import sparse_pipeline

SparseSD3Pipeline = sparse_pipeline(StableDiffusion3Pipeline, "SparseSD3Pipeline")
