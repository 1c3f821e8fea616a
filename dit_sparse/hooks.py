"""StepHook: the forward hook that tells a transformer's SparseRuntime about each call."""

from __future__ import annotations

import inspect

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .families import context_parallel_families

HOOK_NAME = "dit_sparse"
COMPILED_HOOK = (
    "dit_sparse's step hook ran inside a compiled region: the transformer was compiled as a whole after "
    "dit_sparse.apply. Call dit_sparse.apply(pipe) again after torch.compile (it moves the hook outside the "
    "compiled module), or compile the blocks instead: pipe.transformer.compile_repeated_blocks(fullgraph=True)."
)


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
        self.pre_hook = None  # handle of the torch forward pre-hook, set by call_site

    def call_site(self, module):
        """Read each call's inputs where `module` (the transformer, or the torch.compile wrapper
        that holds it) is called: a wrapper's own hooks run before, outside, its compiled region."""
        if self.pre_hook is not None:
            self.pre_hook.remove()
        self.pre_hook = module.register_forward_pre_hook(self.begin_call, with_kwargs=True)

    def begin_call(self, module, args, kwargs):
        """The torch forward pre-hook: tell the runtime about this call (inputs unchanged)."""
        if torch.compiler.is_compiling():
            raise RuntimeError(COMPILED_HOOK)
        module = unwrap(module)
        parallel = getattr(module, "_parallel_config", None)
        if getattr(parallel, "context_parallel_config", None) is not None and not self.family.context_parallel:
            raise ValueError(
                f"dit_sparse does not support context parallelism for {type(module).__name__} ({self.family.name}); "
                f"it does for {context_parallel_families()}. Run this model without enable_parallelism or without "
                "dit_sparse."
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


def unwrap(module):
    """The module a torch.compile wrapper (OptimizedModule) holds, else the module itself."""
    return getattr(module, "_orig_mod", module)


def attach(transformer, hook: StepHook):
    """Register `hook` on a transformer (or the torch.compile wrapper that holds it)."""
    HookRegistry.check_if_exists_or_initialize(unwrap(transformer)).register_hook(hook, HOOK_NAME)
    hook.call_site(transformer)


def detach(transformer):
    hook = attached(transformer)
    if hook is not None:
        hook.pre_hook.remove()
        unwrap(transformer)._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)


def attached(transformer) -> StepHook | None:
    registry = getattr(unwrap(transformer), "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None


def registered(module, hook_name: str) -> list:
    """Every diffusers hook named `hook_name` in `module`'s tree (e.g. a step cache's block hooks)."""
    found = []
    for submodule in unwrap(module).modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        hook = registry.get_hook(hook_name) if registry is not None else None
        if hook is not None:
            found.append(hook)
    return found
