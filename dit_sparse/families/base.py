"""ModelFamily: what dit_sparse needs to know about one family of diffusers transformers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.utils import logging

from ..context_parallel import context_parallel_attention, ulysses_degree
from ..geometry import TokenGrid
from ..kernels import interleaved_rotary

logger = logging.get_logger(__name__)


@dataclass(frozen=True, eq=False)
class ModelFamily:
    """Everything dit_sparse knows of one family; the CLI, the drop-in pipelines, the error
    messages and the benchmarks read it from the registry (`families.FAMILIES`).

    name: short name ("wan"); title: as users write it ("Wan"); transformer_classes: class names
    of its transformers; pipelines: drop-in class name -> the stock diffusers pipeline class it
    extends (the first is the one the CLI generates with); video: whether those pipelines make
    videos; patch_multiple: the spatial patch when the pipeline packs latents itself (Flux,
    Qwen-Image: 2), else 0 (the transformer's patch size counts);
    self_attention(transformer) -> [(layer index, attention module)] of the self-attention
    layers that get sparse processors (cross-attention and refiners keep theirs);
    make_processor(attention module, runtime, layer) -> the sparse processor for one layer;
    grid(transformer, inputs) -> TokenGrid of the attention sequence, from the forward's named
    inputs; context_parallel: whether its processors run sparse under diffusers' Ulysses context
    parallelism (through the "dit_sparse" attention backend)."""

    name: str
    title: str
    transformer_classes: tuple[str, ...]
    pipelines: dict[str, str]
    video: bool
    self_attention: Callable[[torch.nn.Module], list[tuple[int, torch.nn.Module]]]
    make_processor: Callable
    grid: Callable[[torch.nn.Module, dict], TokenGrid | None]
    patch_multiple: int = 0
    context_parallel: bool = False

    @property
    def pipeline(self) -> str:
        """The stock pipeline class the CLI loads this family's folders with."""
        return next(iter(self.pipelines.values()))

    def matches(self, transformer: torch.nn.Module) -> bool:
        return any(cls.__name__ in self.transformer_classes for cls in type(transformer).__mro__)


class SparseProcessor:
    """Mixed in before a stock attention processor: binds it to the transformer's runtime and
    to its layer index (the key of its plans), and runs the one sparse-or-dense path every
    family processor goes through (`attend`). The runtime's step hook sets `current` before
    each transformer call: None (dense) or the LayerCall to run, so the processor itself makes
    no host decision and traces under torch.compile(fullgraph=True)."""

    def __init__(self, runtime, layer: int):
        super().__init__()
        self.runtime = runtime
        self.layer = layer
        self.current = None
        runtime.processors[layer] = self

    def grid_of(self, grid: TokenGrid | None) -> TokenGrid | None:
        """The token grid of this layer's sparse calls, given the transformer call's."""
        return grid

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

    def attend(self, query, key, value, *, mask=None, padding: tuple[int, int] | None = None, layout: str = "bshd"):
        """This layer's self-attention of q, k, v: sparse where the runtime says so, else the
        family's dense call (`dense`) with the stock `mask`.

        `padding` (start, stop): a run of padded text tokens that `mask` excludes as keys. While
        the runtime is on, those tokens are dropped instead of masked: the rest attends sparse (or
        dense, unmasked, which is exact and spares the backend a key mask), and the padded query
        rows attend densely to the kept keys, as they do under the mask (the grid then counts the
        kept tokens). Under context parallelism q, k, v are this rank's shard of the sequence and
        the sparse call goes through diffusers' Ulysses exchange.
        """
        if padding is None:
            out = self._sparse(query, key, value, layout)
            return self.dense(query, key, value, mask, layout) if out is None else out
        if not self.runtime.enabled:
            return self.dense(query, key, value, mask, layout)
        start, stop = padding
        dim = 1 if layout == "bshd" else 2
        kept = [_drop(x, start, stop, dim) for x in (query, key, value)]
        out = self._sparse(*kept, layout)
        if out is None:
            out = self.dense(*kept, None, layout)
        padded = self.dense(query.narrow(dim, start, stop - start), kept[1], kept[2], None, layout)
        parts = (out.narrow(dim, 0, start), padded.to(out.dtype), out.narrow(dim, start, out.shape[dim] - start))
        return torch.cat([p for p in parts if p.shape[dim]], dim=dim)

    def note_dense(self, reason: str):
        """Say at debug level why this layer's call runs dense (the sparse path cannot take it);
        eager calls only, since a logger call would break a compiled graph."""
        if not torch.compiler.is_compiling():
            logger.debug("%s layer %d: dense (%s)", self.runtime.name, self.layer, reason)

    def _sparse(self, query, key, value, layout):
        """The sparse output in the call's layout, or None where the runtime decided dense."""
        call = self.current
        if call is None:
            return None
        parallel = self._context_parallel_config()
        if parallel is not None:
            return context_parallel_attention(query, key, value, call, self.runtime.grid, parallel)
        if layout == "bshd":
            return call.run(*(x.transpose(1, 2) for x in (query, key, value))).transpose(1, 2)
        return call.run(query, key, value)

    def dense(self, query, key, value, mask=None, layout: str = "bshd", reason: str | None = None):
        """Full attention as the stock processor runs it: through diffusers' attention dispatch
        with the processor's backend and parallel settings for (B, S, H, D) q, k, v; with torch's
        SDPA for (B, H, S, D) (the processors that call it directly: CogVideoX, SD3). `reason`:
        why a call the sparse path cannot take runs dense (logged at debug level)."""
        if reason is not None:
            self.note_dense(reason)
        if layout == "bhsd":
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return dispatch_attention_fn(
            query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False,
            backend=getattr(self, "_attention_backend", None), parallel_config=getattr(self, "_parallel_config", None),
        )


def _drop(x, start: int, stop: int, dim: int):
    """`x` without positions [start, stop) of `dim`: a view where they end the sequence."""
    if stop >= x.shape[dim]:
        return x.narrow(dim, 0, start)
    return torch.cat([x.narrow(dim, 0, start), x.narrow(dim, stop, x.shape[dim] - stop)], dim=dim)


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
