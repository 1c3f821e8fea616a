"""The checks every family must pass (family_checks.py), run on each family's tiny pipeline
(test_family_<name>.py: `build`, `call_kwargs`, `BRANCHES`)."""

import importlib

import pytest

import family_checks as checks

FAMILIES = ("wan", "cogvideox", "hunyuan_video", "ltx", "flux", "sd3", "qwenimage")
CHECKS = (
    checks.check_all_dense_steps_are_identical,
    checks.check_sparse_path_with_full_bands_matches_stock,
    checks.check_default_config_runs_sparse,
    checks.check_remove_restores_processors,
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("family", FAMILIES)
def test_family(family, check):
    module = importlib.import_module(f"test_family_{family}")
    options = {}
    if check is checks.check_all_dense_steps_are_identical:
        options["bit_exact"] = getattr(module, "DENSE_STEPS_BIT_EXACT", True)
    check(module.build, module.call_kwargs, **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_step_and_branch_bookkeeping(family):
    module = importlib.import_module(f"test_family_{family}")
    checks.check_step_and_branch_bookkeeping(module.build, module.call_kwargs, branches=module.BRANCHES)
