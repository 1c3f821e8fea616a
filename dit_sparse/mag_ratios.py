"""MagCache's magnitude ratios: calibrate them for a model, save and load them, and the bundled
demo model's.

MagCache (diffusers' `MagCacheConfig`) skips a step when the accumulated change of the
transformer's residual, predicted from per-step magnitude ratios, stays small. The ratios are
a property of the checkpoint (and its scheduler), so they are measured once: diffusers' own
MagCache hook in calibration mode runs the model dense, nothing skipped, and computes each
step's ratio mean(|r_t| / |r_t-1|) over tokens of the residual r = tail block output - head
block input. `calibrate_mag_cache` records those per CFG branch over a few generations and
averages them (diffusers applies one ratio per step to every branch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import hooks

ASSETS = Path(__file__).parent / "assets"
DEMO_RATIOS = ASSETS / "mag_ratios_demo_model.json"


def transformer_config(transformer) -> dict:
    """The transformer's architecture as its config states it (private "_" keys left out), in JSON types."""
    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(config, default=list))


def bundled(transformer) -> list[float] | None:
    """The bundled ratios for `transformer` (the demo model's, for a transformer of its class and
    config), else None."""
    record = json.loads(DEMO_RATIOS.read_text())
    if type(transformer).__name__ != record["transformer"] or transformer_config(transformer) != record["transformer_config"]:
        return None
    return record["mag_ratios"]


def load(path) -> list[float]:
    """The ratios of a JSON file written by `save` (or `dit-sparse calibrate`), or of a plain JSON list."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read MagCache ratios from {path}: {e}") from None
    ratios = record["mag_ratios"] if isinstance(record, dict) and "mag_ratios" in record else record
    if not isinstance(ratios, list) or not ratios or not all(isinstance(r, (int, float)) for r in ratios):
        raise ValueError(f"{path} holds no MagCache ratios: expected a JSON list of numbers or an object with 'mag_ratios'")
    return [float(r) for r in ratios]


def save(out, ratios: dict, transformer, /, **about) -> Path:
    """Write `calibrate_mag_cache`'s result to `out` with the transformer's class and config and
    `about` (how it was calibrated) as JSON."""
    path = Path(out)
    path.write_text(json.dumps(dict(
        transformer=type(transformer).__name__, transformer_config=transformer_config(transformer),
        num_inference_steps=len(ratios["mag_ratios"]), **ratios, calibration=about,
    ), indent=1) + "\n")
    return path


def calibrate_mag_cache(pipe, calls: list[dict], transformer: str = "transformer") -> dict:
    """Magnitude ratios of `pipe.<transformer>` over the generations `calls` (pipeline call
    arguments, all with the same `num_inference_steps`): {"mag_ratios": per step, averaged over
    calls and CFG branches, "by_branch": per branch}. The calls run dense (a dit_sparse handle is
    switched off meanwhile) and with nothing skipped; the transformer must have no step cache.
    diffusers' hook computes each ratio; its tail hook's calibration step is wrapped (on that
    instance) to record them per branch, since the hook only prints them at the end of a run."""
    from diffusers.hooks import MagCacheConfig
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

    model = getattr(pipe, transformer)
    if getattr(model, "_cache_config", None) is not None:
        raise ValueError(f"{transformer} has a step cache enabled ({type(model._cache_config).__name__}): call "
                         "disable_cache() (or dit_sparse.apply(pipe, cache='none')) before calibrating")
    steps = {call.get("num_inference_steps") for call in calls}
    if len(steps) != 1 or None in steps:
        raise ValueError(f"every calibration call needs the same num_inference_steps, got {sorted(map(str, steps))}")
    (num_steps,) = steps
    handle = getattr(model, "_dit_sparse_handle", None)
    was_enabled = handle is not None and handle.enabled
    # one step more than the calls run, so that the hook never reaches its end-of-run print and reset
    model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=num_steps + 1))
    tail = next(hook for hook in hooks.registered(model, _MAG_CACHE_BLOCK_HOOK) if hook.is_tail)
    per_call: list[dict[str, list[float]]] = []  # per call: CFG branch -> ratio per step
    calibration_step = tail._perform_calibration_step

    def recording(state, residual):
        calibration_step(state, residual)
        per_call[-1].setdefault(tail.state_manager.context.name, []).append(state.calibration_ratios[-1])

    tail._perform_calibration_step = recording
    try:
        if handle is not None:
            handle.enabled = False
        for call in calls:
            per_call.append({})
            pipe(**call)
    finally:
        model.disable_cache()
        if handle is not None:
            handle.enabled = was_enabled
    branches = sorted({name for run in per_call for name in run})
    by_branch = {name: np.mean([run[name] for run in per_call if name in run], axis=0).tolist() for name in branches}
    if not by_branch or any(len(r) != num_steps for r in by_branch.values()):
        raise RuntimeError(f"the calibration recorded {({k: len(v) for k, v in by_branch.items()})} ratios per CFG branch, "
                           f"expected {num_steps} (one per step)")
    return dict(mag_ratios=np.mean(list(by_branch.values()), axis=0).tolist(), by_branch=by_branch)

