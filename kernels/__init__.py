"""Triton kernels and their PyTorch references (installed as `dit_sparse.kernels`)."""

if __name__ != "dit_sparse.kernels":
    # With the repository root on sys.path this folder is also a top-level package `kernels`,
    # which transformers imports when it probes for Hugging Face's `kernels`. Importing the
    # kernels under a second name would register their torch ops a second time, which replaces
    # (and frees) the ops that `dit_sparse.kernels` calls: under any other name it is empty.
    __all__ = []
else:
    from .block_sparse_attention import (
        KernelConfig,
        block_sparse_attention,
        block_sparse_attention_reference,
        default_config,
    )
    from .block_lse import sampled_block_lse, sampled_block_lse_reference
    from .quantize import QuantizedQKV, quantize_qkv, quantize_qkv_reference
    from .quantized_attention import (
        default_quantized_config,
        quantized_block_sparse_attention,
        quantized_block_sparse_attention_reference,
    )
    from .reorder import TokenOrder, reorder_tokens, reorder_tokens_reference
    from .rotary import interleaved_rotary, interleaved_rotary_reference

    __all__ = [
        "KernelConfig",
        "QuantizedQKV",
        "TokenOrder",
        "block_sparse_attention",
        "block_sparse_attention_reference",
        "default_config",
        "default_quantized_config",
        "interleaved_rotary",
        "interleaved_rotary_reference",
        "quantize_qkv",
        "quantize_qkv_reference",
        "quantized_block_sparse_attention",
        "quantized_block_sparse_attention_reference",
        "reorder_tokens",
        "sampled_block_lse",
        "sampled_block_lse_reference",
        "reorder_tokens_reference",
    ]
