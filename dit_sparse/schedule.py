"""SchedulerClock: where a pipeline's denoising loop stands, read from its scheduler.

The pipeline's scheduler is the one clock that every transformer of a pipeline shares (Wan 2.2
A14B's two experts included) and that every pipeline keeps, whatever it passes through
diffusers' cache context. `set_timesteps` at the start of a generation makes a new timesteps
tensor, and the scheduler's step index counts the steps taken since; both mark where a
generation begins without guessing from timestep values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoopPosition:
    """timesteps: the scheduler's timesteps tensor (a new object for each generation); step:
    the denoising steps completed, or None where the scheduler keeps no step index; num_steps:
    the generation's denoising steps."""

    timesteps: torch.Tensor
    step: int | None
    num_steps: int


class SchedulerClock:
    """Reads a diffusers scheduler's position once per transformer call."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def read(self) -> LoopPosition | None:
        """The position now, or None before the scheduler has timesteps."""
        scheduler = self.scheduler
        timesteps = getattr(scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0:
            return None
        order = max(1, int(getattr(scheduler, "order", 1)))
        begin = getattr(scheduler, "begin_index", None) or 0  # set by image-to-image pipelines that skip steps
        step = None
        if hasattr(type(scheduler), "step_index"):  # a property on the schedulers that count their steps
            index = scheduler.step_index  # None until the generation's first `step`
            step = 0 if index is None else max(0, index - begin) // order
        return LoopPosition(timesteps, step, max(1, (len(timesteps) - begin) // order))
