"""SparseRuntime: the per-transformer state that attention processors consult.

One runtime per transformer (Wan 2.2 A14B has two). A hook on the transformer's forward
(`StepHook`) tells it, once per call, the token grid, the denoising step and the CFG branch;
from those the runtime decides, for each of its self-attention layers, whether the call runs
dense or sparse and under which plan, and hands each processor its `LayerCall` (None: dense).
The processors then only do tensor work, which torch.compile traces without a break.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from diffusers.utils import logging

from .config import SparseAttentionConfig
from .geometry import TokenGrid
from .plan_cache import LayerCall, PlanCache
from .schedule import SchedulerClock
from .stats import PlanStats, SparseStats

logger = logging.get_logger(__name__)


class SparseRuntime:
    def __init__(self, config: SparseAttentionConfig, name: str = "transformer", clock: SchedulerClock | None = None):
        self.name = name
        self.clock = clock  # the pipeline's scheduler; None for a bare transformer
        self.enabled = True
        self.grid: TokenGrid | None = None
        self.num_steps: int | None = None
        self.branch: str | int = 0
        self.processors: dict = {}  # layer index -> the sparse processor of that layer (they register)
        self.step_cache = None  # the diffusers step cache apply(cache=...) added (step_cache.StepCache), if any
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

    @property
    def layers(self) -> list[int]:
        """Indices of the self-attention layers it serves."""
        return sorted(self.processors)

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
        self.cache.settle()
        self._ended = True

    def begin_call(self, grid: TokenGrid | None, timestep, context=None, device=None):
        """Called by the hook before each transformer forward (on `device`, default the CPU):
        sets the step and branch, and decides every layer's call.

        A new generation starts after `end_generation`, when the pipeline's scheduler has new
        timesteps, or when the step index falls. The step is diffusers' cache context's
        `step_index` where the pipeline passes one, else the scheduler's step index (shared by
        every transformer of the pipeline). Without either (a bare transformer, or a scheduler
        that keeps no step index) it is guessed from the timestep: a new value is the next step,
        a larger one a new generation. The CFG branch is the context's name ("cond", "uncond",
        "cond_uncond"), else the call's ordinal within its step (Wan without contexts calls
        cond, then uncond).
        """
        self.grid = None if grid is None else self.cache.canonical(grid)
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
        self._decide(torch.device("cpu") if device is None else device)
        if self.step_cache is not None:
            held = 0 if self.config.cache_in_warmup else self.warmup_steps()  # steps the cache may not serve
            self.step_cache.align(self.step, self.num_steps, held, sparse=self.enabled)

    def warmup_steps(self) -> int:
        """How many of this generation's first steps run dense (`dense_steps`)."""
        return self.cache.warmup_steps(self.num_steps)

    def _decide(self, device):
        """Each registered processor's call for this transformer call (its `current`): None where
        the layer runs dense, else the plan to attend under. Made here, on the host and outside
        any compiled region, so the processors' own code is tensor work only."""
        for layer, processor in self.processors.items():
            processor.current = self._layer_call(layer, processor.grid_of(self.grid), device)

    def _layer_call(self, layer: int, grid: TokenGrid | None, device) -> LayerCall | None:
        if not self.enabled or grid is None:
            logger.debug("%s layer %d: dense (%s)", self.name, layer,
                         "sparse attention switched off" if not self.enabled else "no token grid for this call")
            return None
        call = self.cache.prepare((layer, self.branch), layer=layer, step=self.step, num_steps=self.num_steps,
                                  grid=grid, device=device)
        dense = call is None or call.dense
        self.steps_by_branch[self.branch]["dense" if dense else "sparse"].add(self.step)
        if dense:
            logger.debug("%s layer %d branch %s step %d: dense (%s)", self.name, layer, self.branch, self.step,
                         f"dense_layers={self.config.dense_layers}" if layer < self.config.dense_layers
                         else f"warm-up step, dense_steps={self.config.dense_steps}")
        return call

    def stats(self) -> SparseStats:
        """Per layer: the kinds and densities of its latest plan per branch; totals; the steps
        whose sparse calls ran and those a step cache skipped. Call it between transformer calls."""
        self.cache.settle()
        layers = {}
        for (layer, branch), plan in sorted(self.cache.plans.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            if plan.patterns is None:  # decided, but its call never ran
                continue
            heads = plan.heads or range(plan.shape[1])
            density = plan.density  # read back from the device once for both figures
            layers.setdefault(f"{self.name}.{layer}", {})[str(branch)] = PlanStats(
                kinds=plan.kinds, density=density.tolist(), mean_density=float(density.mean()),
                profiled_at_step=self.cache.profiled_at((layer, branch)), heads=(heads.start, heads.stop),
            )
        steps = {str(b): {k: sorted(s) for k, s in d.items()} for b, d in self.steps_by_branch.items()}
        return SparseStats(
            layers=layers, layer_indices={self.name: self.layers}, mean_density=self.cache.mean_density(),
            num_profiles=self.cache.num_profiles, dense_calls=self.cache.dense_calls,
            sparse_calls=self.cache.sparse_calls, steps={self.name: steps}, config=self.config,
            skipped_calls=self.cache.skipped_calls, computed_steps={self.name: self._steps_where(all)},
            skipped_steps={self.name: self._steps_where(lambda ran: not all(ran))},
        )

    def _steps_where(self, rule) -> list[int]:
        """The steps whose sparse calls' outcomes (ran or skipped, over layers and branches) pass `rule`."""
        by_step: dict[int, list[bool]] = {}
        for outcomes in self.cache.outcomes.values():
            for step, ran in outcomes.items():
                by_step.setdefault(step, []).append(ran)
        return sorted(step for step, ran in by_step.items() if rule(ran))


def _scalar(timestep) -> float | None:
    """The timestep of a call as one float (the largest of a per-sample or per-token tensor;
    one host read per transformer call, outside any attention call)."""
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.max()) if timestep.numel() else None
    return float(timestep)
