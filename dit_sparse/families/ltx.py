"""LTX-Video (`LTXVideoTransformer3DModel`): self-attention (`attn1`) over the video tokens
only; the text comes in through the cross-attention (`attn2`), which keeps its processor."""

from __future__ import annotations

import math

from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor, apply_rotary_emb

from ..geometry import TokenGrid
from .base import ModelFamily, SparseProcessor


class SparseLTXVideoAttnProcessor(SparseProcessor, LTXVideoAttnProcessor):
    """LTXVideoAttnProcessor for the self-attention (`attn1`) of a block: the same projections,
    q/k norms and RoPE, with the attention call routed through the sparse runtime."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        out = self.attend(query, key, value).flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _grid(transformer, inputs) -> TokenGrid | None:
    """From the forward's `num_frames`, `height`, `width`: in tokens (what the RoPE assumes), or
    in latents before the transformer's patching; None (dense) when neither matches the packed
    sequence (e.g. LTXConditionPipeline's extra condition tokens, or sizes not given)."""
    sizes = [inputs.get(name) for name in ("num_frames", "height", "width")]
    if any(s is None for s in sizes):
        return None
    frames, height, width = (int(s) for s in sizes)
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    seq_len = inputs["hidden_states"].shape[1]
    for dims in ((frames, height, width), (frames // p_t, height // p, width // p)):
        if min(dims) > 0 and math.prod(dims) == seq_len:
            return TokenGrid(*dims)
    return None


LTX = ModelFamily(
    name="ltx",
    title="LTX-Video",
    transformer_classes=("LTXVideoTransformer3DModel",),
    pipelines={"SparseLTXPipeline": "LTXPipeline"},
    video=True,
    self_attention=lambda t: [(i, block.attn1) for i, block in enumerate(t.transformer_blocks)],
    make_processor=lambda module, runtime, layer: SparseLTXVideoAttnProcessor(runtime, layer),
    grid=_grid,
    context_parallel=True,
)
