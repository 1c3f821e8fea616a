"""Qwen-Image (`QwenImageTransformer2DModel`): joint attention over [text, image] in every
`transformer_blocks` block.

The image grid is the forward's `img_shapes` entry (frames, rows, columns of packed tokens) when
it holds one image whose token count is `hidden_states`' length (edit pipelines that append
condition images give no grid and run stock). The text prefix is `encoder_hidden_states`' length.

Text padding: the stock processor turns `encoder_hidden_states_mask` into a key mask. The
pipeline passes None unless some prompt is padded. When every sample's mask is the same run of
valid tokens followed by padding, the grid's text_len is that valid length and the processor
gives the sparse path only [valid text, image] (so padded keys stay excluded); the padded text
queries then attend densely to those same keys, as in the stock masked call. Any other mask
gives no grid, so the call runs stock.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_qwenimage import (
    QwenDoubleStreamAttnProcessor2_0,
    apply_rotary_emb_qwen,
)

from ..geometry import TokenGrid
from .base import ModelFamily, SparseProcessor


class SparseQwenDoubleStreamAttnProcessor(SparseProcessor, QwenDoubleStreamAttnProcessor2_0):
    """QwenDoubleStreamAttnProcessor2_0 with the same projections, q/k norms, RoPE and text
    mask, with the joint [text, image] attention call routed through the sparse runtime."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None or attention_mask is not None:  # the stock path (it raises)
            return super().__call__(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                                    attention_mask, image_rotary_emb)
        if encoder_hidden_states_mask is not None:
            seq_img = hidden_states.shape[1]
            image_mask = torch.ones((hidden_states.shape[0], seq_img), dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)
            attention_mask = attention_mask[:, None, None, :]
        seq_txt = encoder_hidden_states.shape[1]

        img_query, img_key, img_value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        txt_query = attn.add_q_proj(encoder_hidden_states)
        txt_key = attn.add_k_proj(encoder_hidden_states)
        txt_value = attn.add_v_proj(encoder_hidden_states)
        head_dim = attn.inner_dim // attn.heads
        img_query, img_key, img_value = (t.unflatten(-1, (-1, head_dim)) for t in (img_query, img_key, img_value))
        txt_query, txt_key, txt_value = (t.unflatten(-1, (-1, head_dim)) for t in (txt_query, txt_key, txt_value))
        if attn.norm_q is not None:
            img_query = attn.norm_q(img_query)
        if attn.norm_k is not None:
            img_key = attn.norm_k(img_key)
        if attn.norm_added_q is not None:
            txt_query = attn.norm_added_q(txt_query)
        if attn.norm_added_k is not None:
            txt_key = attn.norm_added_k(txt_key)
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img_query = apply_rotary_emb_qwen(img_query, img_freqs, use_real=False)
            img_key = apply_rotary_emb_qwen(img_key, img_freqs, use_real=False)
            txt_query = apply_rotary_emb_qwen(txt_query, txt_freqs, use_real=False)
            txt_key = apply_rotary_emb_qwen(txt_key, txt_freqs, use_real=False)
        joint_query = torch.cat([txt_query, img_query], dim=1)
        joint_key = torch.cat([txt_key, img_key], dim=1)
        joint_value = torch.cat([txt_value, img_value], dim=1)

        grid = self.runtime.grid
        if grid is None or joint_query.shape[1] - seq_txt + grid.text_len != grid.num_tokens:
            out = self.dense(joint_query, joint_key, joint_value, attention_mask, reason="no image grid for this call")
        else:  # the grid's text_len is the valid prefix of a padded text
            padding = (grid.text_len, seq_txt) if grid.text_len < seq_txt else None
            out = self.attend(joint_query, joint_key, joint_value, mask=attention_mask, padding=padding)
        joint_hidden_states = out.flatten(2, 3).to(joint_query.dtype)

        txt_attn_output = joint_hidden_states[:, :seq_txt, :]
        img_attn_output = joint_hidden_states[:, seq_txt:, :]
        img_attn_output = attn.to_out[0](img_attn_output.contiguous())
        if len(attn.to_out) > 1:
            img_attn_output = attn.to_out[1](img_attn_output)
        txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
        return img_attn_output, txt_attn_output


def _image_shape(img_shapes):
    """The one (frames, rows, columns) of `img_shapes` as the RoPE reads it (first sample), or None."""
    shapes = img_shapes[0] if isinstance(img_shapes, list) and img_shapes else img_shapes
    shapes = shapes if isinstance(shapes, list) else [shapes]
    if len(shapes) != 1 or len(shapes[0]) != 3:
        return None
    return tuple(int(s) for s in shapes[0])


def _valid_text_len(mask, seq_txt: int) -> int | None:
    """The common number of valid leading text tokens when every sample's mask is that many
    ones then zeros; None for any other mask."""
    if mask is None:
        return seq_txt
    mask = mask.detach().to("cpu", torch.bool)
    if mask.ndim != 2 or mask.shape[1] != seq_txt:
        return None
    valid = int(mask[0].sum())
    if valid == 0 or not mask[:, :valid].all() or mask[:, valid:].any():
        return None
    return valid


def _grid(transformer, inputs) -> TokenGrid | None:
    hidden, text, img_shapes = inputs.get("hidden_states"), inputs.get("encoder_hidden_states"), inputs.get("img_shapes")
    if hidden is None or text is None or img_shapes is None:
        return None
    shape = _image_shape(img_shapes)
    if shape is None or min(shape) < 1 or shape[0] * shape[1] * shape[2] != hidden.shape[1]:
        return None
    text_len = _valid_text_len(inputs.get("encoder_hidden_states_mask"), text.shape[1])
    if text_len is None:
        return None
    return TokenGrid(*shape, text_len, "prefix")


QWENIMAGE = ModelFamily(
    name="qwenimage",
    title="Qwen-Image",
    transformer_classes=("QwenImageTransformer2DModel",),
    pipelines={"SparseQwenImagePipeline": "QwenImagePipeline"},
    video=False,
    patch_multiple=2,
    self_attention=lambda t: [
        (i, block.attn) for i, block in enumerate(t.transformer_blocks)
        if type(block.attn.processor) is QwenDoubleStreamAttnProcessor2_0
    ],
    make_processor=lambda module, runtime, layer: SparseQwenDoubleStreamAttnProcessor(runtime, layer),
    grid=_grid,
)
