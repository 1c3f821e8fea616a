"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): self-attention over the video tokens only."""

from __future__ import annotations

from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from ..geometry import TokenGrid
from ..kernels import interleaved_rotary
from .base import ModelFamily, SparseProcessor, latent_grid


class SparseWanAttnProcessor(SparseProcessor, WanAttnProcessor):
    """WanAttnProcessor for the self-attention (`attn1`) of a block: the same projections,
    q/k norms and RoPE, with the attention call routed through the sparse runtime. The RoPE is
    one Triton pass over q and k on the GPU (diffusers' eight ops per tensor, same result)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:  # not self-attention: the stock path
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = interleaved_rotary(query, key, *rotary_emb)
        if attention_mask is None:
            out = self.attend(query, key, value)
        else:
            out = self.dense(query, key, value, attention_mask, reason="attention mask")
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _grid(transformer, inputs) -> TokenGrid:
    frames, height, width = latent_grid(inputs["hidden_states"].shape, transformer.config.patch_size)
    return TokenGrid(frames, height, width)


WAN = ModelFamily(
    name="wan",
    title="Wan",
    transformer_classes=("WanTransformer3DModel",),
    pipelines={"SparseWanPipeline": "WanPipeline"},
    video=True,
    self_attention=lambda t: [(i, block.attn1) for i, block in enumerate(t.blocks)],
    make_processor=lambda module, runtime, layer: SparseWanAttnProcessor(runtime, layer),
    grid=_grid,
    context_parallel=True,
)
