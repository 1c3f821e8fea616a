"""PlanCache: head plans per (layer, CFG branch), kept across denoising steps.

The step bookkeeping of the method: full attention in the warm-up steps and the first
`dense_layers` blocks; a plan is profiled at a key's first computed sparse call, re-used, and
profiled again once it has served `refresh_every` computed calls (never, for 0). A plan never
serves a call with another grid or device, and a call with another batch size or head count
re-profiles. Pattern banks are kept per grid, since they depend on nothing else.

The decisions are made on the host before a call (`prepare`, from the step hook, outside any
compiled region); the call itself (`LayerCall.run`) is tensor work only, so it traces under
torch.compile, and a changed plan is new tensor data in the same tensors, never a recompile.

A step cache (diffusers' FirstBlockCache, MagCache, TaylorSeer, FasterCache, PAB) may skip a
decided call: its block or attention module never runs. `LayerCall.run` marks the call as run
(one attribute store, which compiled code replays after its graph), and the host settles each
key's previous call at its next decision (`settle`): only calls that ran count, age a plan or
adopt a new profile; a profile whose call was skipped is simply decided again.

With `quantized_warmup`, a warm-up call is a `DenseCall`: the quantized kernel over every key
block, still counted as dense (it is exact attention up to the 8-bit rounding).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .pattern_bank import PatternBank
from .kernels import quantized_block_sparse_attention
from .patterns import block_tables
from .profiling import HeadPlan, choose_patterns, make_bank, run_precision


@dataclass(eq=False)
class ProfileRecord:
    """One profiling of a plan: the step it ran at, the computed sparse calls it served (its own
    included), and the patterns it chose (set by the call that profiled)."""

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
    step: int = 0
    ran: bool = False
    """Set when the call runs; a step cache that skips the layer leaves it False."""
    dense = False

    def run(self, q, k, v, scale=None, heads: range | None = None) -> torch.Tensor:
        """Sparse attention of (B, H, S, D) q, k, v in native token order. `heads`: the global
        indices of the heads q holds when it holds only some (a rank under Ulysses)."""
        plan = self.plan
        if self.profile or not plan.fits(q):
            patterns = choose_patterns(q, k, plan.bank, self.config, scale)
            plan.set_patterns(patterns, heads)
            self.record.patterns = patterns
        self.ran = True
        return plan.attend(q, k, v, scale)


@dataclass
class DenseCall:
    """A dense warm-up call through the quantized kernel in dense mode: every key block of the
    grid (`kv_indices`, `kv_counts`), in `precision`. Runs like a `LayerCall`, but has no plan."""

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    block_size: int
    precision: str
    backend: str
    dense = True

    def run(self, q, k, v, scale=None, heads: range | None = None) -> torch.Tensor:
        return quantized_block_sparse_attention(q, k, v, self.kv_indices, self.kv_counts, block_size=self.block_size,
                                                scale=scale, backend=self.backend, precision=self.precision)


class PlanCache:
    def __init__(self, config: SparseAttentionConfig | None = None):
        self.config = config or SparseAttentionConfig()
        self.plans: dict[Hashable, HeadPlan] = {}
        self._records: dict[Hashable, ProfileRecord] = {}  # each plan's latest profiling that ran
        self._pending: dict[Hashable, LayerCall] = {}  # each key's latest decided call, not yet settled
        self._banks: dict[tuple, PatternBank] = {}
        self._dense_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._grids: dict[TokenGrid, TokenGrid] = {}
        self.reset()

    def reset(self):
        """Forget all plans and counts (a new generation)."""
        self.plans.clear()
        self._records.clear()
        self._pending.clear()
        self.history: list[ProfileRecord] = []  # every profiling that ran in this generation, for statistics
        self.outcomes: dict[Hashable, dict[int, bool]] = {}  # key -> step -> whether its sparse call ran
        self.dense_calls = 0
        self._settled_sparse = 0
        self.skipped_calls = 0

    @property
    def sparse_calls(self) -> int:
        """Sparse calls that ran (a step cache's skips excluded), the latest of each key included."""
        return self._settled_sparse + sum(call.ran for call in self._pending.values())

    @property
    def num_profiles(self) -> int:
        """Profilings that ran (a profile decided for a call that a step cache skipped is not one)."""
        return len(self.history) + sum(call.ran and call.profile for call in self._pending.values())

    def settle(self, key: Hashable | None = None):
        """Count the outcome of `key`'s latest decided call (every key's, for None): call it only
        between transformer calls, when each decided call has run or been skipped."""
        for k in [key] if key is not None else list(self._pending):
            call = self._pending.pop(k, None)
            if call is None:
                continue
            self.outcomes.setdefault(k, {})[call.step] = call.ran
            if not call.ran:
                self.skipped_calls += 1
                continue
            self._settled_sparse += 1
            call.record.calls += 1
            if call.profile:
                self._records[k] = call.record
                self.history.append(call.record)

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

    def warmup_steps(self, num_steps: int | None) -> int:
        """How many first denoising steps of `num_steps` run dense (a count of `dense_steps` where
        the step count is unknown; a fraction then counts none, as `is_dense` refuses it)."""
        if num_steps is None:
            return self.config.dense_steps if isinstance(self.config.dense_steps, int) else 0
        return self.config.num_dense_steps(num_steps)

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
        it runs dense, else the plan to attend under and whether to profile it first (no
        profiling of this plan has run yet, or the plan has served `refresh_every` computed
        calls). Settles the key's previous call first, so that a call a step cache skipped
        neither ages the plan nor counts as a profiling."""
        self.settle(key)
        if self.is_dense(layer, step, num_steps):
            self.dense_calls += 1
            return self._dense_call(layer, grid, device)
        bank = self.bank(grid, device)
        plan = self.plans.get(key)
        if plan is None or plan.bank is not bank:
            plan = self.plans[key] = HeadPlan(bank, self.config.backend, self.config.precision)
            self._records.pop(key, None)
        record = self._records.get(key)
        profile = record is None or self._stale(record, step)
        if profile:
            record = ProfileRecord(step, bank)
        call = self._pending[key] = LayerCall(plan, profile, record, self.config, step)
        return call

    def _dense_call(self, layer: int, grid: TokenGrid, device) -> DenseCall | None:
        """None (the model's own attention), or with `quantized_warmup` a warm-up call of a
        sparse-eligible layer where the quantized kernel runs (else it is the model's own too)."""
        config = self.config
        if not config.quantized_warmup or layer < config.dense_layers:
            return None
        precision = run_precision(config.precision, config.backend, device)
        if precision == "bf16":
            return None
        key = (grid, torch.device(device), config.block_size)
        if key not in self._dense_tables:
            nb = -(-grid.num_tokens // config.block_size)
            self._dense_tables[key] = tuple(t.to(device) for t in block_tables(torch.ones(1, 1, nb, nb, dtype=torch.bool)))
        return DenseCall(*self._dense_tables[key], config.block_size, precision, config.backend)

    def _stale(self, record: ProfileRecord, step: int) -> bool:
        """Due for re-profiling: `refresh_every` computed calls served, or the step went back."""
        return step < record.step or 0 < self.config.refresh_every <= record.calls

    def profiled_at(self, key: Hashable) -> int | None:
        """The step `key`'s plan was last profiled at."""
        record = self._records.get(key)
        return None if record is None else record.step

    def attend(self, q, k, v, *, layer: int, branch: Hashable, step: int, num_steps: int | None,
               grid: TokenGrid, scale=None) -> torch.Tensor | None:
        """Decide and run one call at once (outside the diffusers integration, which decides in its
        step hook): the sparse output (or with `quantized_warmup` a warm-up call's quantized dense
        output), or None where this layer and step run the model's own dense attention."""
        key = (layer, branch)
        call = self.prepare(key, layer=layer, step=step, num_steps=num_steps, grid=grid, device=q.device)
        if call is None:
            return None
        out = call.run(q, k, v, scale)
        self.settle(key)
        return out

    def mean_density(self) -> float | None:
        """Mean fraction of blocks computed over the sparse calls that ran in this generation
        (reads the plans from the device), None before any."""
        calls = {record: record.calls for record in self.history}
        for call in self._pending.values():  # the latest calls, not settled yet
            if call.ran:
                calls[call.record] = calls.get(call.record, call.record.calls) + 1
        served = [(r.bank.density_of(r.patterns).mean().item(), n) for r, n in calls.items() if r.patterns is not None]
        calls = sum(c for _, c in served)
        return sum(d * c for d, c in served) / calls if calls else None
