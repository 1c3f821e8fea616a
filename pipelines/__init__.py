"""Drop-in pipelines: the stock diffusers pipelines with sparse self-attention
(installed as `dit_sparse.pipelines`)."""

from diffusers import (
    CogVideoXPipeline,
    FluxPipeline,
    HunyuanVideoPipeline,
    LTXPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
    WanPipeline,
)

from .sparse_pipeline import sparse_pipeline

SparseWanPipeline = sparse_pipeline(WanPipeline, "SparseWanPipeline")
SparseCogVideoXPipeline = sparse_pipeline(CogVideoXPipeline, "SparseCogVideoXPipeline")
SparseHunyuanVideoPipeline = sparse_pipeline(HunyuanVideoPipeline, "SparseHunyuanVideoPipeline")
SparseLTXPipeline = sparse_pipeline(LTXPipeline, "SparseLTXPipeline")
SparseFluxPipeline = sparse_pipeline(FluxPipeline, "SparseFluxPipeline")
SparseSD3Pipeline = sparse_pipeline(StableDiffusion3Pipeline, "SparseSD3Pipeline")
SparseQwenImagePipeline = sparse_pipeline(QwenImagePipeline, "SparseQwenImagePipeline")

__all__ = [
    "SparseCogVideoXPipeline",
    "SparseFluxPipeline",
    "SparseHunyuanVideoPipeline",
    "SparseLTXPipeline",
    "SparseQwenImagePipeline",
    "SparseSD3Pipeline",
    "SparseWanPipeline",
]
