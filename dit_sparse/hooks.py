"""StepHook: the forward hook that tells a transformer's SparseRuntime about each call."""

from __future__ import annotations

import inspect

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

HOOK_NAME = "dit_sparse"


class _NoState(BaseState):
    def reset(self, *args, **kwargs):
        pass


class StepHook(ModelHook):
    """Before each transformer forward: learn the token grid from the inputs, the step from
    diffusers' cache context or the timestep, and the CFG branch; hand them to the runtime.

    Marked stateful only so that diffusers passes it the cache context (`cache_context(...)`
    sets the context on every StateManager of stateful hooks); the state itself lives on the
    runtime, which resets on its own when a new generation starts.
    """

    _is_stateful = True

    def __init__(self, runtime, family, num_steps=None):
        super().__init__()
        self.runtime = runtime
        self.family = family
        self.num_steps = num_steps  # callable giving the pipeline's step count, or None
        self.context = StateManager(_NoState)

    def pre_forward(self, module, *args, **kwargs):
        # the class's forward: the instance's one is wrapped by hooks and takes *args, **kwargs
        inputs = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
        grid = self.family.grid(module, inputs)
        num_steps = self.num_steps() if self.num_steps else None
        self.runtime.begin_call(grid, inputs.get("timestep"), self.context._context, num_steps)
        return args, kwargs

    def reset_state(self, module):
        return module


def attach(transformer, hook: StepHook):
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, HOOK_NAME)


def detach(transformer):
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)


def attached(transformer) -> StepHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
