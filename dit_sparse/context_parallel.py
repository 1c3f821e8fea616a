"""Sparse attention as a diffusers attention backend, for Ulysses context parallelism.

Under `transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))` each rank
projects q, k, v for its shard of the sequence with all H heads. diffusers' attention backend
then exchanges them (all-to-all) so that the backend's attention op sees the whole sequence for
H/N heads (rank r: heads r*H/N ... (r+1)*H/N - 1), and exchanges the output back. Per-head
sparse attention needs exactly that view, so the family processors send such calls to the
backend registered here ("dit_sparse"): its op runs the runtime's sparse attention on the rank's
heads, with their plans keyed by the global head indices.

diffusers has no public way to add a backend. `sparse_backend()` adds a member to its
`AttentionBackendName` enum and registers through `_AttentionBackendRegistry.register`, as
diffusers registers its own, after checking that those internals are as in the tested version.
The processor's call (its plan, decided by the runtime before the transformer ran) and the
token grid reach the op through the backend's `sparse_call`
keyword (diffusers passes `attention_kwargs` on to the backends that accept them), so nothing
is shared between pipelines but diffusers' own registry.
"""

from __future__ import annotations

import enum
import functools
import inspect
from dataclasses import dataclass

import diffusers
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

from .geometry import TokenGrid
from .plan_cache import LayerCall

BACKEND_NAME = "dit_sparse"
MEMBER_NAME = "DIT_SPARSE"
TESTED_DIFFUSERS_VERSION = "0.42.1"

_TEMPLATED_ULYSSES_ARGS = ("ctx", "query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                           "enable_gqa", "return_lse", "forward_op", "backward_op", "_parallel_config")


class DiffusersInternalsError(RuntimeError):
    """diffusers' attention-backend internals differ from those the backend was written for."""


@dataclass(frozen=True, eq=False)
class SparseCall:
    """What the backend op needs besides q, k, v: the layer's call as the runtime decided it
    (None: dense), and the token grid of the whole (unsharded) sequence."""

    layer_call: LayerCall | None
    grid: TokenGrid


def sparse_backend() -> AttentionBackendName:
    """diffusers' name of the "dit_sparse" backend, registered on first use.

    diffusers keeps one backend registry per process; the backend itself holds no state.
    """
    try:
        member = AttentionBackendName(BACKEND_NAME)
    except ValueError:
        _check_diffusers_internals()
        member = _add_backend_name()
        registry = attention_dispatch._AttentionBackendRegistry
        registry.register(member, constraints=[], supports_context_parallel=True)(sparse_attention_backend)
        _check_registered(member)
        return member
    if attention_dispatch._AttentionBackendRegistry._backends.get(member) is not sparse_attention_backend:
        raise DiffusersInternalsError(f"diffusers already has an attention backend named {BACKEND_NAME!r}")
    return member


def _internals_error(problem: str) -> DiffusersInternalsError:
    return DiffusersInternalsError(
        f"dit_sparse cannot register its attention backend with diffusers {diffusers.__version__}: {problem}. "
        f"It was written for, and tested with, diffusers {TESTED_DIFFUSERS_VERSION}; use that version for context "
        "parallelism with dit_sparse, or run without enable_parallelism."
    )


def _check_diffusers_internals():
    """Raise DiffusersInternalsError unless the registry, the backend-name enum and the Ulysses
    template look as they do in the tested diffusers."""
    names = AttentionBackendName
    if not (issubclass(names, str) and issubclass(names, enum.Enum)):
        raise _internals_error("AttentionBackendName is no longer a str Enum")
    for attribute, kind in (("_member_map_", dict), ("_value2member_map_", dict), ("_member_names_", list)):
        if not isinstance(getattr(names, attribute, None), kind):
            raise _internals_error(f"AttentionBackendName has no {attribute} {kind.__name__} (Python's Enum changed)")
    registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
    if registry is None:
        raise _internals_error("attention_dispatch has no _AttentionBackendRegistry")
    for attribute, kind in (("_backends", dict), ("_constraints", dict), ("_supported_arg_names", dict),
                            ("_supports_context_parallel", set)):
        if not isinstance(getattr(registry, attribute, None), kind):
            raise _internals_error(f"_AttentionBackendRegistry has no {attribute} {kind.__name__}")
    register = getattr(registry, "register", None)
    if register is None or list(inspect.signature(register).parameters) != ["backend", "constraints",
                                                                              "supports_context_parallel"]:
        raise _internals_error("_AttentionBackendRegistry.register no longer takes (backend, constraints, "
                               "supports_context_parallel)")
    ulysses = getattr(attention_dispatch, "TemplatedUlyssesAttention", None)
    if ulysses is None or tuple(inspect.signature(ulysses.forward).parameters) != _TEMPLATED_ULYSSES_ARGS:
        raise _internals_error(f"TemplatedUlyssesAttention.forward no longer takes {_TEMPLATED_ULYSSES_ARGS}")
    dispatch_parameters = set(inspect.signature(dispatch_attention_fn).parameters)
    if not {"attention_kwargs", "backend", "parallel_config"} <= dispatch_parameters:
        raise _internals_error("dispatch_attention_fn no longer takes attention_kwargs, backend and parallel_config")


def _add_backend_name() -> AttentionBackendName:
    """A new member of AttentionBackendName, set up as Python's Enum sets up the declared ones."""
    names = AttentionBackendName
    member = str.__new__(names, BACKEND_NAME)
    member._name_, member._value_ = MEMBER_NAME, BACKEND_NAME
    member.__objclass__ = names
    member._sort_order_ = len(names._member_names_)
    type.__setattr__(names, MEMBER_NAME, member)  # EnumType.__setattr__ refuses to add members
    names._member_names_.append(MEMBER_NAME)
    names._member_map_[MEMBER_NAME] = member
    names._value2member_map_[BACKEND_NAME] = member
    return member


def _check_registered(member: AttentionBackendName):
    registry = attention_dispatch._AttentionBackendRegistry
    if not (AttentionBackendName(BACKEND_NAME) is member and AttentionBackendName[MEMBER_NAME] is member
            and member in list(AttentionBackendName) and registry._backends.get(member) is sparse_attention_backend
            and registry._is_context_parallel_available(member)
            and "sparse_call" in registry._supported_arg_names.get(member, ())):
        raise _internals_error("the registered backend cannot be looked up as diffusers' own are")


def ulysses_degree(parallel_config) -> int:
    """The number of sequence shards of a diffusers ParallelConfig's context parallelism, which
    must be plain Ulysses (the sparse op needs the whole sequence of its heads)."""
    cp = parallel_config.context_parallel_config
    if cp.ring_degree > 1:
        raise ValueError(
            f"dit_sparse runs sparse attention under Ulysses context parallelism only; this ContextParallelConfig has "
            f"ring_degree={cp.ring_degree}, where no rank sees the whole sequence. Use "
            "ContextParallelConfig(ulysses_degree=N) (ring_degree=1)."
        )
    if cp.ulysses_anything:
        raise ValueError(
            "dit_sparse does not support ContextParallelConfig(ulysses_anything=True) (uneven shards, padded heads); "
            "use sizes whose sequence and head count divide by ulysses_degree, with ulysses_anything=False."
        )
    return cp.ulysses_degree


def gathered_positions(grid: TokenGrid, shards: int, device) -> torch.Tensor | None:
    """The grid position of each token of a sequence that Ulysses gathered from `shards` ranks.

    Every rank holds its equal part of the text and of the video, laid out as the grid lays them
    out (Flux: [its text, its image tokens]); the gathered sequence is rank 0's, then rank 1's, ...
    That is the grid's own order (None) unless there is text and more than one shard.
    """
    if shards == 1 or grid.text_len == 0:
        return None
    text, video = grid.text_len, grid.num_video_tokens
    if text % shards or video % shards:
        raise ValueError(
            f"{text} text and {video} video tokens do not split evenly into {shards} sequence shards; choose sizes "
            "that do (diffusers' Ulysses needs that too)"
        )
    rank = torch.arange(shards, device=device)[:, None]
    text_start, video_start = (0, text) if grid.text_position == "prefix" else (video, 0)
    text_positions = text_start + rank * (text // shards) + torch.arange(text // shards, device=device)
    video_positions = video_start + rank * (video // shards) + torch.arange(video // shards, device=device)
    parts = (text_positions, video_positions) if grid.text_position == "prefix" else (video_positions, text_positions)
    return torch.cat(parts, dim=1).flatten()


def attend_heads(query, key, value, call: SparseCall, *, scale=None, heads: range | None = None, shards: int = 1):
    """Attention of (B, S, h, D) q, k, v that hold the whole sequence of `call.grid` for the
    heads `heads` (None: all), gathered from `shards` sequence shards: sparse under the layer's
    plan, full attention (SDPA) where its layer and step run dense. Output (B, S, h, D)."""
    if query.shape[1] != call.grid.num_tokens:
        raise ValueError(
            f"the attention sequence holds {query.shape[1]} tokens but the grid has {call.grid.num_tokens} "
            f"({call.grid}); under context parallelism every rank must see the whole input of the transformer call"
        )
    positions = gathered_positions(call.grid, shards, query.device)
    if positions is not None:
        order = positions.argsort()
        query, key, value = (x.index_select(1, order) for x in (query, key, value))
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    if call.layer_call is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)
    else:
        out = call.layer_call.run(q, k, v, scale, heads).transpose(1, 2)
    return out if positions is None else out.index_select(1, positions)


def _ulysses_forward_op(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                        _save_ctx=True, _parallel_config=None, *, sparse_call: SparseCall):
    """The op TemplatedUlyssesAttention runs between its all-to-alls: q, k, v are (B, S, H/N, D),
    the whole sequence for this rank's heads, which are the rank's consecutive H/N of the H."""
    group = _parallel_config.context_parallel_config._ulysses_mesh.get_group()
    rank, shards = dist.get_rank(group), dist.get_world_size(group)
    local = query.shape[2]
    heads = range(rank * local, (rank + 1) * local)
    return attend_heads(query, key, value, sparse_call, scale=scale, heads=heads, shards=shards)


def _inference_only_backward_op(ctx, grad_out, *args, **kwargs):
    raise NotImplementedError(
        "dit_sparse's sparse attention is for inference: it has no backward pass under context parallelism"
    )


def sparse_attention_backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                             enable_gqa=False, return_lse=False, _parallel_config=None, sparse_call=None):
    """The "dit_sparse" attention backend: (B, S, H, D) q, k, v in, (B, S, H, D) out.

    With `sparse_call` (a dit_sparse processor passes it through `attention_kwargs`): that
    layer's sparse attention; under Ulysses context parallelism on the whole sequence of this
    rank's heads, between diffusers' all-to-alls. Without: diffusers' native backend (dense),
    so the backend also serves every other attention call once set with set_attention_backend.
    """
    if sparse_call is None:
        return dispatch_attention_fn(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa, attention_kwargs={"return_lse": True} if return_lse else None,
            backend=AttentionBackendName.NATIVE, parallel_config=_parallel_config,
        )
    unsupported = [name for name, used in (("attn_mask", attn_mask is not None), ("dropout_p", dropout_p != 0.0),
                                           ("is_causal", is_causal), ("enable_gqa", enable_gqa),
                                           ("return_lse", return_lse)) if used]
    if unsupported:
        raise ValueError(f"the dit_sparse backend's sparse attention does not support {', '.join(unsupported)}")
    if getattr(_parallel_config, "context_parallel_config", None) is None:
        return attend_heads(query, key, value, sparse_call, scale=scale)
    shards = ulysses_degree(_parallel_config)
    if query.shape[2] % shards:
        raise ValueError(f"{query.shape[2]} attention heads do not split evenly over ulysses_degree={shards} ranks")
    forward_op = functools.partial(_ulysses_forward_op, sparse_call=sparse_call)
    return attention_dispatch.TemplatedUlyssesAttention.apply(
        query, key, value, None, 0.0, False, scale, False, False, forward_op, _inference_only_backward_op,
        _parallel_config,
    )


def context_parallel_attention(query, key, value, layer_call: LayerCall, grid: TokenGrid, parallel_config):
    """A processor's sparse self-attention under context parallelism: this rank's (B, S/N, H, D)
    shard of q, k, v in, its shard of the output out, through diffusers' Ulysses exchange and
    the "dit_sparse" backend."""
    ulysses_degree(parallel_config)
    return dispatch_attention_fn(
        query, key, value, attention_kwargs={"sparse_call": SparseCall(layer_call, grid)},
        backend=sparse_backend(), parallel_config=parallel_config,
    )
