"""Flux.1 (`FluxTransformer2DModel`): joint attention over [text, image] in the dual-stream
`transformer_blocks` and the single-stream `single_transformer_blocks`, numbered as one layer
sequence (dual-stream blocks first).

The image grid comes from the forward's `img_ids` (rows of (0, row, column), one per packed
latent token, as `FluxPipeline._prepare_latent_image_ids` makes them): height and width are the
spans of the row and column ids, and the ids must be exactly the raster of that grid with as
many rows as `hidden_states` has tokens. Anything else (Kontext's appended reference image,
ids in another order) gives no grid, so those calls run stock.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from ..geometry import TokenGrid
from .base import ModelFamily, SparseProcessor, rotate_query_key


class SparseFluxAttnProcessor(SparseProcessor, FluxAttnProcessor):
    """FluxAttnProcessor with the same projections, q/k norms and RoPE, with the joint
    [text, image] attention call routed through the sparse runtime."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query, key = rotate_query_key(query, key, image_rotary_emb)

        grid = self.runtime.grid  # of the whole sequence; a rank under context parallelism holds a shard of it
        fits = attention_mask is None and grid is not None and query.shape[1] * self.sequence_shards == grid.num_tokens
        out = self.attend(query, key, value) if fits else self.dense(query, key, value, attention_mask, reason="no image grid for this call, or a mask")
        hidden_states = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


def _self_attention(transformer):
    """Every block's joint attention, dual-stream then single-stream, where it still has the
    plain FluxAttnProcessor (IP-adapter processors keep theirs)."""
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    return [(i, block.attn) for i, block in enumerate(blocks) if type(block.attn.processor) is FluxAttnProcessor]


def _grid(transformer, inputs) -> TokenGrid | None:
    """(1, rows, columns) of the packed latent from `img_ids`, text prefix of
    `encoder_hidden_states`' length; None where the ids are not one raster-ordered image."""
    hidden, text, img_ids = inputs.get("hidden_states"), inputs.get("encoder_hidden_states"), inputs.get("img_ids")
    if hidden is None or text is None or img_ids is None:
        return None
    ids = (img_ids[0] if img_ids.ndim == 3 else img_ids).detach().to("cpu", torch.float64)
    n = hidden.shape[1]
    if ids.ndim != 2 or ids.shape[0] != n or ids.shape[1] < 3 or n == 0:
        return None
    rows, cols = ids[:, 1] - ids[0, 1], ids[:, 2] - ids[0, 2]
    height, width = int(rows[-1]) + 1, int(cols[-1]) + 1
    if height < 1 or width < 1 or height * width != n:
        return None
    raster_rows = torch.arange(height, dtype=ids.dtype).repeat_interleave(width)
    raster_cols = torch.arange(width, dtype=ids.dtype).repeat(height)
    if not (torch.equal(rows, raster_rows) and torch.equal(cols, raster_cols)):
        return None
    return TokenGrid(1, height, width, text.shape[1], "prefix" if text.shape[1] else "none")


FLUX = ModelFamily(
    name="flux",
    title="Flux",
    transformer_classes=("FluxTransformer2DModel",),
    pipelines={"SparseFluxPipeline": "FluxPipeline"},
    video=False,
    patch_multiple=2,
    self_attention=_self_attention,
    make_processor=lambda module, runtime, layer: SparseFluxAttnProcessor(runtime, layer),
    grid=_grid,
    context_parallel=True,
)
