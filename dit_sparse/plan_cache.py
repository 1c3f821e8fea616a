"""PlanCache: head plans per (layer, CFG branch), kept across denoising steps.

The step bookkeeping of the method: full attention in the warm-up steps and the first
`dense_layers` blocks; a plan is profiled at a key's first sparse step, re-used, and profiled
again once it is `refresh_every` steps old (never, for 0). A plan never serves a call with
another grid or device, and a call with another batch size or head count re-profiles. Pattern
banks are kept per grid, since they depend on nothing else.

The decisions are made on the host before a call (`prepare`, from the step hook, outside any
compiled region); the call itself (`LayerCall.run`) is tensor work only, so it traces under
torch.compile, and a changed plan is new tensor data in the same tensors, never a recompile.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .pattern_bank import PatternBank
from .profiling import HeadPlan, choose_patterns, make_bank


@dataclass(eq=False)
class ProfileRecord:
    """One profiling of a plan: the step it was decided at, the sparse calls it served, and the
    patterns it chose (set by the call that profiled; None if that call never ran)."""

    step: int
    bank: PatternBank
    calls: int = 0
    patterns: torch.Tensor | None = None


@dataclass(eq=False)
class LayerCall:
    """What one sparse attention call of a layer does, decided before the transformer runs:
    attend under `plan`, profiling it first when `profile` is set (or when the call's batch or
    head count no longer fits the plan)."""

    plan: HeadPlan
    profile: bool
    record: ProfileRecord
    config: SparseAttentionConfig

    def run(self, q, k, v, scale=None, heads: range | None = None) -> torch.Tensor:
        """Sparse attention of (B, H, S, D) q, k, v in native token order. `heads`: the global
        indices of the heads q holds when it holds only some (a rank under Ulysses)."""
        plan = self.plan
        if self.profile or not plan.fits(q):
            patterns = choose_patterns(q, k, plan.bank, self.config, scale)
            plan.set_patterns(patterns, heads)
            self.record.patterns = patterns
        return plan.attend(q, k, v, scale)


class PlanCache:
    def __init__(self, config: SparseAttentionConfig | None = None):
        self.config = config or SparseAttentionConfig()
        self.plans: dict[Hashable, HeadPlan] = {}
        self._records: dict[Hashable, ProfileRecord] = {}  # each plan's latest profiling
        self._banks: dict[tuple, PatternBank] = {}
        self._grids: dict[TokenGrid, TokenGrid] = {}
        self.reset()

    def reset(self):
        """Forget all plans and counts (a new generation)."""
        self.plans.clear()
        self._records.clear()
        self.history: list[ProfileRecord] = []  # every profiling of this generation, for statistics
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

    def canonical(self, grid: TokenGrid) -> TokenGrid:
        """One object per distinct grid, kept across generations like the banks: compiled code
        that reads a call's grid and its plan's sees the same object every time (torch.compile
        guards on whether two of its inputs are the same object)."""
        return self._grids.setdefault(grid, grid)

    def bank(self, grid: TokenGrid, device) -> PatternBank:
        key = (grid, torch.device(device))
        if key not in self._banks:
            self._banks[key] = make_bank(self.canonical(grid), self.config, device)
        return self._banks[key]

    def prepare(self, key: Hashable, *, layer: int, step: int, num_steps: int | None, grid: TokenGrid,
                device) -> LayerCall | None:
        """The host's decision for one call of `key` (e.g. (layer, branch)) at `step`: None where
        it runs dense, else the plan to attend under and whether to profile it first (no plan
        for this grid yet, the last profiling never ran, or the plan is due for a refresh).
        Counts the call."""
        if self.is_dense(layer, step, num_steps):
            self.dense_calls += 1
            return None
        bank = self.bank(grid, device)
        plan, record = self.plans.get(key), self._records.get(key)
        if plan is None or plan.bank is not bank:
            plan = self.plans[key] = HeadPlan(bank, self.config.backend, self.config.precision)
            record = None
        profile = record is None or record.patterns is None or self._stale(record, step)
        if profile:
            record = self._records[key] = ProfileRecord(step, bank)
            self.history.append(record)
            self.num_profiles += 1
        record.calls += 1
        self.sparse_calls += 1
        return LayerCall(plan, profile, record, self.config)

    def _stale(self, record: ProfileRecord, step: int) -> bool:
        age = step - record.step
        return age < 0 or (self.config.refresh_every > 0 and age >= self.config.refresh_every)

    def profiled_at(self, key: Hashable) -> int | None:
        """The step `key`'s plan was last profiled at."""
        record = self._records.get(key)
        return None if record is None else record.step

    def attend(self, q, k, v, *, layer: int, branch: Hashable, step: int, num_steps: int | None,
               grid: TokenGrid, scale=None) -> torch.Tensor | None:
        """Decide and run one call at once (outside the diffusers integration, which decides in its
        step hook): the sparse output, or None where this layer and step run dense."""
        call = self.prepare((layer, branch), layer=layer, step=step, num_steps=num_steps, grid=grid,
                            device=q.device)
        return None if call is None else call.run(q, k, v, scale)

    def mean_density(self) -> float | None:
        """Mean fraction of blocks computed over the sparse calls of this generation (reads the
        plans from the device), None before any sparse call that profiled or re-used a plan."""
        served = [(r.bank.density_of(r.patterns).mean().item(), r.calls) for r in self.history if r.patterns is not None]
        calls = sum(c for _, c in served)
        return sum(d * c for d, c in served) / calls if calls else None
