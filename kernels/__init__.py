"""Triton kernels and their PyTorch references (installed as `dit_sparse.kernels`)."""

from .block_sparse_attention import (
    KernelConfig,
    block_sparse_attention,
    block_sparse_attention_reference,
    default_config,
)
from .block_lse import sampled_block_lse, sampled_block_lse_reference
from .reorder import TokenOrder, reorder_tokens, reorder_tokens_reference
from .rotary import interleaved_rotary, interleaved_rotary_reference

__all__ = [
    "KernelConfig",
    "TokenOrder",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "default_config",
    "interleaved_rotary",
    "interleaved_rotary_reference",
    "reorder_tokens",
    "sampled_block_lse",
    "sampled_block_lse_reference",
    "reorder_tokens_reference",
]
