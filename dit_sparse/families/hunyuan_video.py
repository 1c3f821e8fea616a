"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): joint self-attention over the video tokens
followed by the (padded) text tokens, in the dual-stream and the single-stream blocks.

The stock model masks the keys past `video + encoder_attention_mask.sum()` for every query.
The sparse kernel cannot mask single keys, so the sparse path drops the padded text tokens:
it attends over video + the first L text tokens (L the same for every batch item) and computes
the padded query rows with the stock masked call. Dense layers and steps do the same with full
attention, which is exact and spares cuDNN the key mask. Batches whose items have different L
run the stock attention.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from ..geometry import TokenGrid
from .base import ModelFamily, SparseProcessor, latent_grid, project_heads, rotate_query_key


def _qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """Joint (B, S, H, D) query, key and value, video then text (as in HunyuanVideoAttnProcessor2_0)."""
    if attn.add_q_proj is None:
        hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
    text = encoder_hidden_states.shape[1]
    query, key, value = project_heads(attn, hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
    if image_rotary_emb is not None:
        if attn.add_q_proj is None:
            video_query, video_key = rotate_query_key(query[:, :-text], key[:, :-text], image_rotary_emb)
            query = torch.cat([video_query, query[:, -text:]], dim=1)
            key = torch.cat([video_key, key[:, -text:]], dim=1)
        else:
            query, key = rotate_query_key(query, key, image_rotary_emb)
    if attn.add_q_proj is not None:
        encoder_query, encoder_key, encoder_value = project_heads(
            attn, encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
            (attn.norm_added_q, attn.norm_added_k),
        )
        query = torch.cat([query, encoder_query], dim=1)
        key = torch.cat([key, encoder_key], dim=1)
        value = torch.cat([value, encoder_value], dim=1)
    return query, key, value


class SparseHunyuanVideoAttnProcessor(SparseProcessor, HunyuanVideoAttnProcessor2_0):
    """HunyuanVideoAttnProcessor2_0 of a dual- or single-stream block: the same projections,
    norms and RoPE; the joint attention over video + valid text goes through the sparse runtime."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        grid = self.runtime.grid
        if (
            encoder_hidden_states is None or grid is None or grid.num_video_tokens != hidden_states.shape[1]
            or grid.text_len > encoder_hidden_states.shape[1]
            or (attention_mask is None and grid.text_len != encoder_hidden_states.shape[1])
        ):
            self.note_dense("no token grid for this call (e.g. batch items with different text lengths)")
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value = _qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        valid, total = grid.num_tokens, query.shape[1]
        # padded text dropped rather than masked, in dense layers and steps too (a key mask makes
        # cuDNN ~1.4x slower at 720p; docs/results/e2e_notes.md)
        padding = (valid, total) if valid < total else None
        out = self.attend(query, key, value, mask=attention_mask, padding=padding)
        out = out.flatten(2, 3).to(query.dtype)
        text = encoder_hidden_states.shape[1]
        hidden_states, encoder_hidden_states = out[:, :-text], out[:, -text:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _valid_text_lengths(encoder_attention_mask) -> list[int]:
    """Per batch item, the number of text tokens the stock model attends to (its mask's sum)."""
    return encoder_attention_mask.sum(dim=1, dtype=torch.int).tolist()


def _grid(transformer, inputs) -> TokenGrid | None:
    """Video tokens + the valid text tokens; None (stock attention) when the batch items have
    different numbers of valid text tokens."""
    config = transformer.config
    patch = (config.patch_size_t, config.patch_size, config.patch_size)
    frames, height, width = latent_grid(inputs["hidden_states"].shape, patch)
    text = inputs["encoder_hidden_states"].shape[1]
    mask = inputs.get("encoder_attention_mask")
    lengths = {min(max(n, 0), text) for n in _valid_text_lengths(mask)} if mask is not None else {text}
    if len(lengths) != 1:
        return None
    text_len = lengths.pop()
    return TokenGrid(frames, height, width, text_len, "suffix" if text_len else "none")


def _self_attention(transformer):
    """Dual-stream blocks, then single-stream blocks, numbered as one sequence."""
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    return [(i, block.attn) for i, block in enumerate(blocks)]


HUNYUAN_VIDEO = ModelFamily(
    name="hunyuan_video",
    title="HunyuanVideo",
    transformer_classes=("HunyuanVideoTransformer3DModel",),
    pipelines={"SparseHunyuanVideoPipeline": "HunyuanVideoPipeline"},
    video=True,
    self_attention=_self_attention,
    make_processor=lambda module, runtime, layer: SparseHunyuanVideoAttnProcessor(runtime, layer),
    grid=_grid,
)
