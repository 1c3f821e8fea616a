"""StepHook: the forward hook that tells a transformer's SparseRuntime about each call."""

from __future__ import annotations

import inspect

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

HOOK_NAME = "dit_sparse"


class _NoState(BaseState):
    def reset(self, *args, **kwargs):
        pass


class StepHook(ModelHook):
    """Before each transformer forward: learn the token grid from the inputs, the step from
    diffusers' cache context or the timestep, and the CFG branch; hand them to the runtime.

    The call's inputs are read by a torch forward pre-hook (`begin_call`), which runs before the
    transformer's forward and so before every diffusers hook wrapping it: under context
    parallelism it sees the whole sequence that diffusers' split hook then shards, whether
    `enable_parallelism` came before or after `apply`. The diffusers hook itself is there only to
    receive the cache context and the end of each pipeline call: it is stateful, so
    `cache_context(...)` sets the context on its StateManager, and the pipeline's
    `maybe_free_model_hooks` calls its `reset_state` when a generation ends. The state itself
    lives on the runtime.
    """

    _is_stateful = True

    def __init__(self, runtime, family):
        super().__init__()
        self.runtime = runtime
        self.family = family
        self.context = StateManager(_NoState)
        self.pre_hook = None  # handle of the torch forward pre-hook, set by attach

    def begin_call(self, module, args, kwargs):
        """The torch forward pre-hook: tell the runtime about this call (inputs unchanged)."""
        parallel = getattr(module, "_parallel_config", None)
        if getattr(parallel, "context_parallel_config", None) is not None and not self.family.context_parallel:
            raise ValueError(
                f"dit_sparse does not support context parallelism for {type(module).__name__} ({self.family.name}); "
                "it does for Wan, Flux and LTX-Video. Run this model without enable_parallelism or without dit_sparse."
            )
        # the class's forward: the instance's one is wrapped by hooks and takes *args, **kwargs
        inputs = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
        grid = self.family.grid(module, inputs)
        hidden_states = inputs.get("hidden_states")
        device = hidden_states.device if isinstance(hidden_states, torch.Tensor) else None
        self.runtime.begin_call(grid, inputs.get("timestep"), self.context._context, device)

    def reset_state(self, module):
        """The pipeline's call has ended: the next call starts a new generation."""
        self.runtime.end_generation()
        return module


def attach(transformer, hook: StepHook):
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, HOOK_NAME)
    hook.pre_hook = transformer.register_forward_pre_hook(hook.begin_call, with_kwargs=True)


def detach(transformer):
    hook = attached(transformer)
    if hook is not None:
        hook.pre_hook.remove()
        transformer._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)


def attached(transformer) -> StepHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
