"""PlanCache: head plans per (layer, CFG branch), kept across denoising steps.

The step bookkeeping of the method: full attention in the warm-up steps and the first
`dense_layers` blocks; a plan is profiled at a key's first sparse step, re-used, and profiled
again once it is `refresh_every` steps old (never, for 0). A plan never serves a call with
another grid, batch size, head count or device: such a call re-profiles. Pattern banks are
kept per grid, since they depend on nothing else.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .pattern_bank import PatternBank
from .profiling import HeadPlan, make_bank, profile_heads


class PlanCache:
    def __init__(self, config: SparseAttentionConfig | None = None):
        self.config = config or SparseAttentionConfig()
        self.plans: dict[Hashable, HeadPlan] = {}
        self._banks: dict[tuple, PatternBank] = {}
        self.reset()

    def reset(self):
        """Forget all plans and counts (a new generation)."""
        self.plans.clear()
        self.history: list[HeadPlan] = []  # every plan of this generation, for statistics
        self.num_profiles = 0
        self.dense_calls = 0
        self.sparse_calls = 0

    def is_dense(self, layer: int, step: int, num_steps: int | None) -> bool:
        """Whether block `layer` runs full attention at denoising step `step` of `num_steps`."""
        if layer < self.config.dense_layers:
            return True
        if num_steps is None:
            if isinstance(self.config.dense_steps, float) and self.config.dense_steps > 0:
                raise ValueError(
                    f"SparseAttentionConfig.dense_steps={self.config.dense_steps} is a fraction of the "
                    "steps, but the number of denoising steps is unknown; give an int count instead"
                )
            return step < self.config.dense_steps
        return step < self.config.num_dense_steps(num_steps)

    def bank(self, grid: TokenGrid, device) -> PatternBank:
        key = (grid, torch.device(device))
        if key not in self._banks:
            self._banks[key] = make_bank(grid, self.config, device)
        return self._banks[key]

    def _stale(self, plan: HeadPlan, step: int) -> bool:
        age = step - plan.step
        return age < 0 or (self.config.refresh_every > 0 and age >= self.config.refresh_every)

    def plan(self, key: Hashable, step: int, q, k, v, grid: TokenGrid, scale=None) -> HeadPlan:
        """The plan for `key` (e.g. (layer, branch)) at `step`, profiling when there is none
        that fits or it is due for a refresh."""
        plan = self.plans.get(key)
        if plan is None or not plan.fits(q, grid) or self._stale(plan, step):
            plan = profile_heads(q, k, v, grid, self.config, scale=scale, bank=self.bank(grid, q.device))
            plan.step = step
            self.plans[key] = plan
            self.history.append(plan)
            self.num_profiles += 1
        return plan

    def attend(self, q, k, v, *, layer: int, branch: Hashable, step: int, num_steps: int | None,
               grid: TokenGrid, scale=None) -> torch.Tensor | None:
        """Sparse attention of one call, or None where this layer and step run dense (the caller
        then runs the model's own attention)."""
        if self.is_dense(layer, step, num_steps):
            self.dense_calls += 1
            return None
        plan = self.plan((layer, branch), step, q, k, v, grid, scale)
        self.sparse_calls += 1
        plan.calls += 1
        return plan.attend(q, k, v, scale)

    def mean_density(self) -> float | None:
        """Mean fraction of blocks computed over the sparse calls of this generation (reads
        the plans from the device), None before any sparse call."""
        calls = sum(p.calls for p in self.history)
        return sum(p.mean_density * p.calls for p in self.history) / calls if calls else None
