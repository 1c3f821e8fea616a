"""SparseRuntime: the per-transformer state that attention processors consult.

One runtime per transformer (Wan 2.2 A14B has two). A hook on the transformer's forward
(`StepHook`) tells it, once per call, the token grid, the denoising step and the CFG branch;
the processors of its self-attention layers then ask `attention(q, k, v, layer)` for the
sparse output, or None where the layer and step run dense (they then run the model's own
attention call).
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import torch
from diffusers.utils import logging

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .plan_cache import PlanCache
from .schedule import SchedulerClock
from .stats import PlanStats, SparseStats

logger = logging.get_logger(__name__)


class ShardedBranch(NamedTuple):
    """The plan key's branch for a call that holds only some of the heads (Ulysses context
    parallelism): its CFG branch and the global indices of the heads it holds."""

    branch: str | int
    heads: range


class SparseRuntime:
    def __init__(self, config: SparseAttentionConfig, name: str = "transformer", clock: SchedulerClock | None = None):
        self.name = name
        self.clock = clock  # the pipeline's scheduler; None for a bare transformer
        self.enabled = True
        self.grid: TokenGrid | None = None
        self.num_steps: int | None = None
        self.branch: str | int = 0
        self.layers: list[int] = []  # indices of the self-attention layers it serves (set by apply)
        self.set_config(config)

    def set_config(self, config: SparseAttentionConfig):
        """Switch to another config: plans and counts start afresh. A fraction of dense steps
        needs the step count, which only a pipeline's scheduler gives: refused without one, so
        that no generation fails half way."""
        if self.clock is None and isinstance(config.dense_steps, float) and config.dense_steps > 0:
            raise ValueError(
                f"SparseAttentionConfig.dense_steps={config.dense_steps} is a fraction of the denoising steps, but "
                f"dit_sparse was applied to a bare transformer ({self.name}), which does not know how many steps a "
                "generation has. Apply it to the pipeline instead (dit_sparse.apply(pipe)), whose scheduler gives the "
                "step count, or give dense_steps as a count, e.g. SparseAttentionConfig.preset('balanced', dense_steps=10)."
            )
        self.cache = PlanCache(config)
        self.reset()

    @property
    def config(self) -> SparseAttentionConfig:
        return self.cache.config

    def reset(self):
        """Forget plans, counts and step bookkeeping (a new generation)."""
        self.cache.reset()
        self.step = 0
        self._ended = False
        self._timesteps = None  # the scheduler's timesteps tensor of this generation
        self._last_timestep: float | None = None
        self._calls_this_step = 0
        self._names_this_step: set = set()
        self.steps_by_branch: dict = defaultdict(lambda: {"dense": set(), "sparse": set()})

    def end_generation(self):
        """The pipeline's call has ended (diffusers resets stateful hooks there): the next call
        starts a new generation. Plans and statistics stay readable until then."""
        self._ended = True

    def begin_call(self, grid: TokenGrid | None, timestep, context=None):
        """Called by the hook before each transformer forward.

        A new generation starts after `end_generation`, when the pipeline's scheduler has new
        timesteps, or when the step index falls. The step is diffusers' cache context's
        `step_index` where the pipeline passes one, else the scheduler's step index (shared by
        every transformer of the pipeline). Without either (a bare transformer, or a scheduler
        that keeps no step index) it is guessed from the timestep: a new value is the next step,
        a larger one a new generation. The CFG branch is the context's name ("cond", "uncond",
        "cond_uncond"), else the call's ordinal within its step (Wan without contexts calls
        cond, then uncond).
        """
        self.grid = grid
        position = self.clock.read() if self.clock is not None else None
        step_index = getattr(context, "step_index", None)
        if step_index is None and position is not None:
            step_index = position.step
        t = _scalar(timestep)
        new_generation = (
            self._ended
            or (position is not None and self._timesteps is not None and position.timesteps is not self._timesteps)
            or (step_index is not None and step_index < self.step)
            # timesteps only fall within a generation (the guess where no scheduler says)
            or (position is None and t is not None and self._last_timestep is not None and t > self._last_timestep)
        )
        if new_generation:
            self.reset()
        if position is not None:
            self._timesteps = position.timesteps
        last = self._last_timestep
        name = getattr(context, "name", None)
        if step_index is not None:
            new_step = step_index != self.step
            self.step = step_index
        else:
            # a named branch runs once per step, so its second call starts the next step even when
            # the timestep did not change (adjacent bf16 timesteps can round to the same value)
            new_step = last is not None and (t != last or (name is not None and name in self._names_this_step))
            self.step += int(new_step)
        if new_step:
            self._calls_this_step = 0
            self._names_this_step = set()
        self._last_timestep = t
        self.num_steps = getattr(context, "num_inference_steps", None) or (position.num_steps if position else None)
        self.branch = name if name is not None else self._calls_this_step
        self._calls_this_step += 1
        self._names_this_step.add(name)

    def attention(self, q, k, v, layer: int, *, layout: str = "bshd", scale=None, grid: TokenGrid | None = None,
                  heads: range | None = None):
        """Sparse attention output for one self-attention call, or None to run it dense.

        q, k, v: (B, S, H, D) for layout "bshd" (diffusers' dispatch layout) or (B, H, S, D) for
        "bhsd"; the output has the same layout. `grid` overrides the call's grid (a processor
        that drops padded text tokens passes the shorter one). `heads`: the global indices of the
        heads q holds when it holds only some (a rank under Ulysses); their plan is kept apart.
        """
        grid = grid or self.grid
        if not self.enabled or grid is None:
            logger.debug("%s layer %d: dense (%s)", self.name, layer,
                         "sparse attention switched off" if not self.enabled else "no token grid for this call")
            return None
        if layout == "bshd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if heads is not None and len(heads) != q.shape[1]:
            raise ValueError(f"heads={heads} names {len(heads)} heads, but q holds {q.shape[1]}")
        branch = self.branch if heads is None else ShardedBranch(self.branch, heads)
        out = self.cache.attend(
            q, k, v, layer=layer, branch=branch, step=self.step, num_steps=self.num_steps, grid=grid, scale=scale,
        )
        kind = "dense" if out is None else "sparse"
        self.steps_by_branch[self.branch][kind].add(self.step)
        if out is None:
            logger.debug("%s layer %d branch %s step %d: dense (%s)", self.name, layer, self.branch, self.step,
                         f"dense_layers={self.config.dense_layers}" if layer < self.config.dense_layers
                         else f"warm-up step, dense_steps={self.config.dense_steps}")
        if out is None:
            return None
        return out.transpose(1, 2) if layout == "bshd" else out

    def stats(self) -> SparseStats:
        """Per layer: the kinds and densities of its latest plan per branch; totals."""
        layers = {}
        for (layer, branch), plan in sorted(self.cache.plans.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            branch, heads = branch if isinstance(branch, ShardedBranch) else (branch, range(plan.shape[1]))
            layers.setdefault(f"{self.name}.{layer}", {})[str(branch)] = PlanStats(
                kinds=plan.kinds, density=plan.density.tolist(), mean_density=plan.mean_density,
                profiled_at_step=plan.step, heads=(heads.start, heads.stop),
            )
        steps = {str(b): {k: sorted(s) for k, s in d.items()} for b, d in self.steps_by_branch.items()}
        return SparseStats(
            layers=layers, layer_indices={self.name: list(self.layers)}, mean_density=self.cache.mean_density(),
            num_profiles=self.cache.num_profiles, dense_calls=self.cache.dense_calls,
            sparse_calls=self.cache.sparse_calls, steps={self.name: steps}, config=self.config,
        )


def _scalar(timestep) -> float | None:
    """The timestep of a call as one float (the largest of a per-sample or per-token tensor;
    one host read per transformer call, outside any attention call)."""
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.max()) if timestep.numel() else None
    return float(timestep)
