"""CogVideoX 1.0 / 1.5 (`CogVideoXTransformer3DModel`): joint attention over the text tokens
(a prefix) and the video tokens."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb

from ..geometry import TokenGrid
from .base import ModelFamily, SparseProcessor


class SparseCogVideoXAttnProcessor(SparseProcessor, CogVideoXAttnProcessor2_0):
    """CogVideoXAttnProcessor2_0 (or its fused-QKV variant, `fused=True`) for the joint
    self-attention of a block: the same projections, q/k norms and RoPE on the video tokens,
    with the attention call routed through the sparse runtime."""

    def __init__(self, runtime, layer: int, fused: bool = False):
        super().__init__(runtime, layer)
        self.fused = fused

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:  # a mask the sparse path cannot honour: the stock path
            stock = FusedCogVideoXAttnProcessor2_0 if self.fused else CogVideoXAttnProcessor2_0
            return stock.__call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.size(0)
        if self.fused:
            qkv = attn.to_qkv(hidden_states)
            query, key, value = torch.split(qkv, qkv.shape[-1] // 3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)
        out = self.attend(query, key, value, layout="bhsd")
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_hidden_states, hidden_states = out.split([text_seq_length, out.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


def _grid(transformer, inputs) -> TokenGrid:
    """hidden_states are (B, F, C, H, W) latents; 1.5 patches time by `patch_size_t` too."""
    _, frames, _, height, width = inputs["hidden_states"].shape
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t or 1
    text_len = inputs["encoder_hidden_states"].shape[1]
    return TokenGrid(frames // p_t, height // p, width // p, text_len, "prefix" if text_len else "none")


COGVIDEOX = ModelFamily(
    name="cogvideox",
    title="CogVideoX",
    transformer_classes=("CogVideoXTransformer3DModel",),
    pipelines={"SparseCogVideoXPipeline": "CogVideoXPipeline"},
    video=True,
    self_attention=lambda t: [(i, block.attn1) for i, block in enumerate(t.transformer_blocks)],
    make_processor=lambda module, runtime, layer: SparseCogVideoXAttnProcessor(
        runtime, layer, fused=isinstance(module.processor, FusedCogVideoXAttnProcessor2_0)
    ),
    grid=_grid,
)
