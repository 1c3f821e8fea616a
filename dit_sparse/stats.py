"""SparseStats: what sparse attention did in a generation, per layer and in total."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import SparseAttentionConfig


@dataclass(frozen=True)
class PlanStats:
    """The latest plan of one layer and CFG branch: per (batch item, head) kind ("spatial",
    "temporal", "dense") and fraction of key blocks computed; the step it was profiled at; the
    global indices [start, stop) of the heads it describes (a rank's heads under Ulysses)."""

    kinds: list[list[str]]
    density: list[list[float]]
    mean_density: float
    profiled_at_step: int
    heads: tuple[int, int]


@dataclass(frozen=True)
class SparseStats:
    """layers: "<transformer>.<layer index>" -> CFG branch -> PlanStats, for the layers that ran
    sparse; layer_indices: per transformer, every layer with a sparse processor; mean_density:
    over the sparse calls that ran (None before any); steps: per transformer and branch, the steps
    decided dense and sparse; config: the config in force.

    Under a step cache (diffusers' FirstBlockCache, MagCache, TaylorSeer, ...), which may skip a
    decided call: sparse_calls and num_profiles count the calls that ran; skipped_calls those a
    cache skipped; computed_steps / skipped_steps, per transformer, the steps whose sparse calls
    all ran / of which a cache skipped some or all (dense warm-up steps are in neither: their
    calls run the model's own attention, which dit_sparse does not track)."""

    layers: dict[str, dict[str, PlanStats]]
    layer_indices: dict[str, list[int]]
    mean_density: float | None
    num_profiles: int
    dense_calls: int
    sparse_calls: int
    steps: dict[str, dict[str, dict[str, list[int]]]]
    config: SparseAttentionConfig
    skipped_calls: int = 0
    computed_steps: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    skipped_steps: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dicts and lists (JSON-ready)."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in items})

    @classmethod
    def merge(cls, parts: list[SparseStats]) -> SparseStats:
        """The statistics of several transformers (Wan 2.2 A14B's two) as one; all share a config."""
        sparse = sum(p.sparse_calls for p in parts)
        weighted = sum((p.mean_density or 0.0) * p.sparse_calls for p in parts)
        return cls(
            layers={k: v for p in parts for k, v in p.layers.items()},
            layer_indices={k: v for p in parts for k, v in p.layer_indices.items()},
            mean_density=weighted / sparse if sparse else None,
            num_profiles=sum(p.num_profiles for p in parts),
            dense_calls=sum(p.dense_calls for p in parts),
            sparse_calls=sparse,
            steps={k: v for p in parts for k, v in p.steps.items()},
            config=parts[0].config,
            skipped_calls=sum(p.skipped_calls for p in parts),
            computed_steps={k: v for p in parts for k, v in p.computed_steps.items()},
            skipped_steps={k: v for p in parts for k, v in p.skipped_steps.items()},
        )
