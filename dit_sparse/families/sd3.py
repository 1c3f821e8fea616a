"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`): joint self-attention over the image
tokens followed by the text tokens (`attn`), and in SD3.5's dual-attention blocks a second
self-attention over the image tokens only (`attn2`)."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from ..geometry import TokenGrid
from .base import ModelFamily, SparseProcessor, latent_grid, project_heads


class SparseJointAttnProcessor(SparseProcessor, JointAttnProcessor2_0):
    """JointAttnProcessor2_0: the same projections and q/k norms, with the attention call
    routed through the sparse runtime (joint image + text for `attn`, image only for `attn2`)."""

    def __init__(self, runtime, layer: int, image_only: bool = False):
        super().__init__(runtime, layer)
        self.image_only = image_only  # SD3.5's `attn2`: no text projections, attends the image tokens alone

    def grid_of(self, grid: TokenGrid | None) -> TokenGrid | None:
        if grid is None or not self.image_only:
            return grid
        return TokenGrid(grid.frames, grid.height, grid.width)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = project_heads(attn, hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
        head_dim = key.shape[-1]
        if encoder_hidden_states is not None:
            encoder_qkv = project_heads(attn, encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                                        (attn.norm_added_q, attn.norm_added_k))
            query, key, value = (torch.cat([t, e], dim=1) for t, e in zip((query, key, value), encoder_qkv))
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))

        grid = self.grid_of(self.runtime.grid)
        if grid is not None and grid.num_tokens == query.shape[2]:
            out = self.attend(query, key, value, layout="bhsd")
        else:
            out = self.dense(query, key, value, layout="bhsd", reason="no token grid for this call")
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, : residual.shape[1]], hidden_states[:, residual.shape[1] :]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def _grid(transformer, inputs) -> TokenGrid:
    """Image tokens (one frame, row-major) followed by the text tokens."""
    patch = transformer.config.patch_size
    frames, height, width = latent_grid(inputs["hidden_states"].shape, (patch, patch))
    return TokenGrid(frames, height, width, inputs["encoder_hidden_states"].shape[1], "suffix")


def _self_attention(transformer):
    """`attn` of block i is layer i; `attn2` of a dual-attention block i is layer num_layers + i."""
    blocks = transformer.transformer_blocks
    joint = [(i, block.attn) for i, block in enumerate(blocks)]
    image_only = [(len(blocks) + i, block.attn2) for i, block in enumerate(blocks) if getattr(block, "attn2", None) is not None]
    return joint + image_only


SD3 = ModelFamily(
    name="sd3",
    title="SD3",
    transformer_classes=("SD3Transformer2DModel",),
    pipelines={"SparseSD3Pipeline": "StableDiffusion3Pipeline"},
    video=False,
    self_attention=_self_attention,
    make_processor=lambda module, runtime, layer: SparseJointAttnProcessor(
        runtime, layer, image_only=module.add_q_proj is None,
    ),
    grid=_grid,
)
