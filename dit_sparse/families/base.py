"""ModelFamily: what dit_sparse needs to know about one family of diffusers transformers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..context_parallel import context_parallel_attention, ulysses_degree
from ..geometry import TokenGrid
from ..kernels import interleaved_rotary


@dataclass(frozen=True)
class ModelFamily:
    """name: short name ("wan"); transformer_classes: class names of its transformers;
    self_attention(transformer) -> [(layer index, attention module)] of the self-attention
    layers that get sparse processors (cross-attention and refiners keep theirs);
    make_processor(original, runtime, layer) -> the sparse processor for one layer;
    grid(transformer, inputs) -> TokenGrid of the attention sequence, from the forward's named
    inputs; context_parallel: whether its processors run sparse under diffusers' Ulysses context
    parallelism (through the "dit_sparse" attention backend)."""

    name: str
    transformer_classes: tuple[str, ...]
    self_attention: Callable[[torch.nn.Module], list[tuple[int, torch.nn.Module]]]
    make_processor: Callable
    grid: Callable[[torch.nn.Module, dict], TokenGrid | None]
    context_parallel: bool = False

    def matches(self, transformer: torch.nn.Module) -> bool:
        return any(cls.__name__ in self.transformer_classes for cls in type(transformer).__mro__)


class SparseProcessor:
    """Mixed in before a stock attention processor: binds it to the transformer's runtime and
    to its layer index (the key of its plans)."""

    def __init__(self, runtime, layer: int):
        super().__init__()
        self.runtime = runtime
        self.layer = layer

    def _context_parallel_config(self):
        """diffusers' ParallelConfig when this processor runs under context parallelism
        (`enable_parallelism` sets the processor's `_parallel_config`), else None."""
        parallel = getattr(self, "_parallel_config", None)
        return parallel if getattr(parallel, "context_parallel_config", None) is not None else None

    @property
    def sequence_shards(self) -> int:
        """How many ranks share the sequence of this processor's calls (1 without context parallelism)."""
        parallel = self._context_parallel_config()
        return 1 if parallel is None else ulysses_degree(parallel)

    def sparse_attention(self, query, key, value):
        """This layer's sparse attention of (B, S, H, D) q, k, v, or None to run the model's own
        attention call. Under context parallelism q, k, v are this rank's shard of the sequence
        and the call goes through diffusers' Ulysses exchange to the "dit_sparse" backend."""
        parallel = self._context_parallel_config()
        if parallel is not None:
            return context_parallel_attention(query, key, value, self.runtime, self.layer, parallel)
        return self.runtime.attention(query, key, value, self.layer)


def rotate_query_key(query, key, rotary_emb):
    """(B, S, H, D) query and key rotated as diffusers' `apply_rotary_emb(x, rotary_emb,
    sequence_dim=1)` rotates each, from its (S, D) cos and sin tables: one Triton pass over both
    on the GPU, bit for bit the same result (kernels/rotary.py)."""
    cos, sin = rotary_emb
    return interleaved_rotary(query, key, cos[None, :, None], sin[None, :, None], convention="diffusers")


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
