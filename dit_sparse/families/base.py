"""ModelFamily: what dit_sparse needs to know about one family of diffusers transformers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..geometry import TokenGrid


@dataclass(frozen=True)
class ModelFamily:
    """name: short name ("wan"); transformer_classes: class names of its transformers;
    self_attention(transformer) -> [(layer index, attention module)] of the self-attention
    layers that get sparse processors (cross-attention and refiners keep theirs);
    make_processor(original, runtime, layer) -> the sparse processor for one layer;
    grid(transformer, inputs) -> TokenGrid of the attention sequence, from the forward's named
    inputs."""

    name: str
    transformer_classes: tuple[str, ...]
    self_attention: Callable[[torch.nn.Module], list[tuple[int, torch.nn.Module]]]
    make_processor: Callable
    grid: Callable[[torch.nn.Module, dict], TokenGrid | None]

    def matches(self, transformer: torch.nn.Module) -> bool:
        return any(cls.__name__ in self.transformer_classes for cls in type(transformer).__mro__)


class SparseProcessor:
    """Mixed in before a stock attention processor: binds it to the transformer's runtime and
    to its layer index (the key of its plans)."""

    def __init__(self, runtime, layer: int):
        super().__init__()
        self.runtime = runtime
        self.layer = layer


def project_heads(attn, hidden_states, projections, norms):
    """(B, S, H, D) query, key and value of `hidden_states` through three linear layers, with the
    optional per-head norms of query and key (as the stock joint-attention processors do, once
    with to_q/k/v and norm_q/k, once with add_q/k/v_proj and norm_added_q/k)."""
    query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)) for proj in projections)
    norm_q, norm_k = norms
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value


def latent_grid(shape, patch_size) -> tuple[int, int, int]:
    """(frames, height, width) in tokens of a (B, C, F, H, W) or (B, C, H, W) latent."""
    if len(shape) == 5:
        pt, ph, pw = patch_size if len(patch_size) == 3 else (1, *patch_size)
        return shape[2] // pt, shape[3] // ph, shape[4] // pw
    ph, pw = patch_size[-2:]
    return 1, shape[2] // ph, shape[3] // pw
