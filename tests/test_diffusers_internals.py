"""The private diffusers names dit_sparse relies on still exist and behave as the code assumes.

pyproject.toml pins diffusers to the range these were checked against; a new diffusers that
moves one of them fails here, by name, rather than inside a user's generation.
"""

import importlib
import inspect
from importlib.metadata import requires, version

import pytest
from diffusers import ContextParallelConfig, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.cache_utils import CacheMixin
from packaging.requirements import Requirement

from dit_sparse import context_parallel

PRIVATE_FUNCTIONS = [  # (module, name): helpers the family processors import
    ("diffusers.models.transformers.transformer_wan", "_get_qkv_projections"),
    ("diffusers.models.transformers.transformer_flux", "_get_qkv_projections"),
]


def test_installed_diffusers_is_in_the_pinned_range():
    pin = next(Requirement(r) for r in requires("dit-sparse") if r.startswith("diffusers"))
    assert pin.specifier and not pin.specifier.contains("0.43.0")  # an upper bound, not just a floor
    assert pin.specifier.contains(version("diffusers"))


@pytest.mark.parametrize("module, name", PRIVATE_FUNCTIONS)
def test_private_helpers_exist(module, name):
    assert callable(getattr(importlib.import_module(module), name))


def test_hook_internals_the_step_hook_uses():
    """StepHook reads the cache context from its StateManager's `_context`, is found through the
    module's `_diffusers_hook` registry, and is reset through `_reset_stateful_cache`, which
    pipelines call in `maybe_free_model_hooks` at the end of a generation."""
    from diffusers.hooks.hooks import BaseState, StateManager

    manager = StateManager(BaseState)
    assert hasattr(manager, "_context")
    for name in ("get_hook", "remove_hook", "register_hook", "reset_stateful_hooks"):
        assert callable(getattr(HookRegistry, name))
    assert hasattr(ModelHook, "_is_stateful") and callable(CacheMixin._reset_stateful_cache)
    assert "_reset_stateful_cache" in inspect.getsource(DiffusionPipeline.maybe_free_model_hooks)
    assert "_diffusers_hook" in inspect.getsource(HookRegistry.check_if_exists_or_initialize)


@pytest.mark.parametrize("scheduler", [FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler])
def test_schedulers_count_steps_as_the_scheduler_clock_reads_them(scheduler):
    assert isinstance(inspect.getattr_static(scheduler, "step_index"), property)
    assert isinstance(inspect.getattr_static(scheduler, "begin_index"), property)


def test_attention_backend_registry_is_as_the_sparse_backend_expects():
    context_parallel._check_diffusers_internals()  # raises DiffusersInternalsError naming what moved
    assert "_ulysses_mesh" in {f for f in ContextParallelConfig.__dataclass_fields__}
