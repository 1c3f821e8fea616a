"""Sparse attention with diffusers' step caches, end to end: the steps a cache computes and the
steps it skips, timed on the full-size architectures, composed into 50-step totals from a skip
schedule, and checked against real 50-step loops.

On random weights a cache's skip decisions mean nothing, so each cache is timed twice with its
decisions forced: once computing every step (its bookkeeping included) and once skipping every
step it can. The totals then follow a schedule: the steps the cache skipped on the bundled demo
model at the chosen setting (`--schedules`, written by the quality study), or, where none is
given, the schedule the cache makes itself in the real loop. MagCache's and TaylorSeer's
decisions depend only on their settings (MagCache's on its calibrated ratios, not on the
activations), so on the full-size models they skip exactly the demo model's steps.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

import dit_sparse
from dit_sparse.generation import ComputedCalls
from dit_sparse.step_cache import CACHE_NAMES

from .e2e import (BASELINES, ProgressLog, compiled_calls, measure_dense, measure_sparse, measure_warmup,
                  measurement_config, profile_steps)
from .models import ModelUnderTest, prepare_model
from .sdpa import sdpa_priority
from .specs import SPECS, STEPS, preset_configs
from .timing import gpu_tag, sync, wall_seconds

CACHES = tuple(name for name in CACHE_NAMES if name != "none")  # the caches dit_sparse names
PRESETS = ("balanced", "fast")  # the presets the quality study pairs with the caches
TARGETS = {"hunyuan-720": 4.0, "wan1.3b-480": 3.0, "wan14b-720": 3.0}  # 50 steps over eager stock dense (issue 21)
TARGET_PSNR = 30.0  # ... with a combination at least this close to dense on the demo model
LOOP_TOLERANCE = 0.03
NEVER_SKIP_BEFORE = 10**6  # a step index no generation reaches


def forced_cache(cache: str, skip: bool, dtype: torch.dtype):
    """A config of `cache` that computes every step (skip=False, its bookkeeping still done) or
    skips every step it can once it has what it needs (skip=True)."""
    if cache == "first-block":
        return FirstBlockCacheConfig(threshold=1e9 if skip else -1.0)
    if cache == "mag":  # skips where the accumulated error is <= the threshold
        return MagCacheConfig(threshold=1e9 if skip else -1.0, max_skip_steps=10**6, retention_ratio=0.0,
                              num_inference_steps=STEPS, mag_ratios=torch.ones(STEPS))
    if cache == "taylorseer":
        return TaylorSeerCacheConfig(use_lite_mode=True, taylor_factors_dtype=dtype, cache_interval=10**6,
                                     disable_cache_before_step=2 if skip else NEVER_SKIP_BEFORE)
    raise ValueError(f"unknown cache {cache!r}: choose from {CACHES}")


def resample(skipped: list[bool], steps: int = STEPS) -> list[bool]:
    """A skip schedule of another step count mapped onto `steps` steps (nearest step by position)."""
    n = len(skipped)
    return [skipped[min(n - 1, round(i * (n - 1) / max(1, steps - 1)))] for i in range(steps)]


@dataclass(frozen=True)
class ContextCalls:
    """The transformer called as its pipeline calls it under a step cache: each call of a step
    inside `cache_context(name, step_index=i)` (cond, then uncond where there are two)."""

    model: torch.nn.Module
    bench: ModelUnderTest

    def step(self, t, index: int):
        calls = self.bench.workload.calls
        names = ("cond", "uncond")[: len(calls)] if len(calls) <= 2 else [f"call{i}" for i in range(len(calls))]
        for name, kwargs in zip(names, calls):
            with self.model.cache_context(name, step_index=index, num_inference_steps=STEPS):
                self.model(**kwargs, timestep=t, return_dict=False)

    def new_generation(self):
        """What the end of a pipeline call does: every stateful hook (the caches', ours) reset."""
        self.model._diffusers_hook.reset_stateful_hooks()

    def loop(self, timesteps):
        self.new_generation()
        for i, t in enumerate(timesteps):
            self.step(t, i)


def time_forced_step(calls: ContextCalls, timesteps, device, repeats: int, skip: bool, handle, warm: bool) -> float:
    """Median seconds of step 2 of a generation (steps 0 and 1 untimed: the first profiling and
    what the cache needs before it can skip), which the forced cache must skip or compute (checked
    in the runtime's statistics after step 3); `warm`: one untimed round first (compiled calls)."""
    seconds = []
    for _ in range(repeats + int(warm)):
        calls.new_generation()
        calls.step(timesteps[0], 0)
        calls.step(timesteps[1], 1)
        seconds.append(wall_seconds(lambda: calls.step(timesteps[2], 2), device))
        calls.step(timesteps[3], 3)  # settles step 2's calls in the statistics
        skipped = 2 in next(iter(handle.stats().skipped_steps.values()), [])
        if skipped != skip:
            raise RuntimeError(f"the forced cache {'computed' if skip else 'skipped'} step 2, expected the opposite")
    return statistics.median(seconds[int(warm):])


def time_cache(calls: ContextCalls, cache: str, device, dtype, repeats: int, handle, warm: bool) -> "CacheSteps":
    """A cache's skipped and computed step, forced, through dit_sparse's handle at its config."""
    times = {}
    for skip in (True, False):
        handle.set_cache(forced_cache(cache, skip, dtype))
        times[skip] = time_forced_step(calls, calls.bench.timesteps, device, repeats, skip, handle, warm)
    handle.set_cache("none")
    return CacheSteps(computed_s=times[False], skipped_s=times[True])


@dataclass(frozen=True)
class CacheSteps:
    """A cache's computed step (a cached sparse step with the cache's bookkeeping) and skipped step."""

    computed_s: float
    skipped_s: float


def compose(config, steps: dict, skipped: list[bool], cache: CacheSteps, overhead: float) -> dict:
    """The 50-step total of sparse `config` with a cache skipping the steps `skipped` marks; our
    dense warm-up steps are skipped only with `config.cache_in_warmup` (else the cache is held
    there). `steps`: warm-up, profile and cached seconds without the cache; `overhead`: what the
    cache adds to a computed step. `n_dense_steps` counts the warm-up steps computed."""
    warmup = config.num_dense_steps(len(skipped))
    served_warmup = sum(skipped[:warmup]) if config.cache_in_warmup else 0
    n_dense = warmup - served_warmup
    n_sparse_skipped = sum(skipped[warmup:])  # a step whose calls the cache served in part counts in part
    n_computed = len(skipped) - warmup - n_sparse_skipped
    n_skipped = n_sparse_skipped + served_warmup
    n_profile = min(n_computed, profile_steps(round(n_computed), config.refresh_every))
    total = (n_dense * (steps["warmup"] + overhead) + n_profile * (steps["profile"] + overhead)
             + (n_computed - n_profile) * cache.computed_s + n_skipped * cache.skipped_s)
    return dict(n_dense_steps=n_dense, n_profile_steps=n_profile, n_cached_steps=n_computed - n_profile,
                n_skipped_steps=n_skipped, total_s=total)


def compose_cache_alone(dense_s: float, skipped: list[bool], dense_cache: CacheSteps, overhead: float) -> dict:
    """The 50-step total of stock dense with the cache alone."""
    n_skipped = sum(skipped)
    return dict(n_skipped_steps=n_skipped, total_s=(len(skipped) - n_skipped) * (dense_s + overhead)
                + n_skipped * dense_cache.skipped_s)


def loop_schedule(recorder: ComputedCalls, calls_per_step: int, held_steps: int) -> list[float]:
    """Per step of the last loop, the share of its transformer calls the cache served (a cache
    may serve the cond call of a step and compute its uncond call); 0 in the first `held_steps`
    (our warm-up, where the cache is held)."""
    ran = recorder.calls[-STEPS * calls_per_step:]
    return [0.0 if i < held_steps else 1.0 - sum(ran[i * calls_per_step:(i + 1) * calls_per_step]) / calls_per_step
            for i in range(STEPS)]


def run_model(key: str, caches: list[str], schedules: dict, baseline: str, repeats: int, tiny: bool,
              full_loop: bool, device, dtype, log: ProgressLog, loop_caches: list[str] | None = None,
              cache_in_warmup: bool = False) -> list[dict]:
    """Every record of one model: stock dense, the presets alone, each cache alone and each preset
    with each cache (`cache_in_warmup`: serving inside the dense warm-up too, on schedules of a
    quality study run with it). A cache's forced computed and skipped steps are timed once, under the balanced
    preset: what it adds to a computed step (its bookkeeping on the hidden states) and what a
    skipped step costs (nothing, or the first block for FirstBlockCache, dense in every config)
    do not depend on the attention, so they carry over to dense and to fast."""
    spec = SPECS[key]
    repeats = spec.repeats(repeats)
    progress = log.for_model(f"{key} {baseline} + caches")
    bench = prepare_model(spec, tiny, device, dtype, progress)
    # compiled: each block's forward, so that the caches' hooks wrap the compiled blocks
    step_calls = (compiled_calls(bench.model, bench.workload, hookable=True) if baseline == "compiled"
                  else BASELINES[baseline](bench.model, bench.workload))
    calls = ContextCalls(step_calls.module, bench)
    configs = cache_bench_configs(spec, tiny, cache_in_warmup)
    timesteps = bench.timesteps
    with torch.no_grad(), sdpa_priority():
        dense = measure_dense(bench, step_calls, repeats, device, progress)
        handle = dit_sparse.apply(calls.model, measurement_config(configs["balanced"]))
        steps, measured = {}, {}
        for name, cfg in configs.items():
            key_ = dataclasses.astuple(measurement_config(cfg))
            if key_ not in measured:
                handle.set_config(measurement_config(cfg))
                measured[key_] = measure_sparse(handle, step_calls, timesteps[0], timesteps[1], repeats, device,
                                                (bench.num_layers - cfg.dense_layers) * len(bench.workload.calls))
            m = measured[key_]
            steps[name] = dict(profile=m.profile_s, cached=m.cached_s)
            progress(f"{name}: profile step {m.profile_s:.3f} s, cached step {m.cached_s:.3f} s")
        handle.set_config(measurement_config(configs["balanced"]))
        timed = {}
        for cache in caches:
            timed[cache] = c = time_cache(calls, cache, device, dtype, repeats, handle, warm=baseline == "compiled")
            progress(f"balanced + {cache}: computed step {c.computed_s:.3f} s, skipped step {c.skipped_s:.3f} s")
        warmup_s = measure_warmup(handle, step_calls.step, timesteps[0], configs["balanced"], bench.num_layers, repeats,
                                  device)
        for name in configs:
            steps[name]["warmup"] = warmup_s
        base = dict(key=key, model=spec.model, height=bench.size[0], width=bench.size[1], num_frames=bench.size[2],
                    tokens=bench.num_tokens, baseline=baseline, steps=STEPS, dense_s_per_step=dense.seconds,
                    total_dense_s=STEPS * dense.seconds, tiny=tiny, cache_in_warmup=cache_in_warmup,
                    device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
        records = compose_records(base, configs, steps, timed, schedules)
        if full_loop and spec.full_loop:
            add_loops(records, handle, calls, configs, loop_caches or caches, schedules, steps, timed, timesteps, device,
                      dtype, progress, warm_every_loop=baseline == "compiled")
        dit_sparse.remove(calls.model)
    return records


def cache_bench_configs(spec, tiny: bool, cache_in_warmup: bool) -> dict:
    """The presets the benchmark pairs with the caches, for `spec`."""
    return {k: dataclasses.replace(v, cache_in_warmup=cache_in_warmup)
            for k, v in preset_configs(spec, tiny).items() if k in PRESETS}


def compose_records(base: dict, configs: dict, steps: dict, timed: dict, schedules: dict) -> list[dict]:
    """The records of one model from its timed steps: stock dense, each preset alone, and each cache
    with a schedule alone and with each preset. `steps`: per preset, its warm-up, profile and cached
    seconds; `timed`: per cache, its forced computed step (under balanced) and skipped step."""
    dense_s = base["dense_s_per_step"]
    records = [dict(base, config="dense", cache="none", total_s=STEPS * dense_s, speedup=1.0)]
    for name, cfg in configs.items():
        total = compose(cfg, steps[name], [False] * STEPS, CacheSteps(steps[name]["cached"], 0.0), 0.0)
        records.append(dict(base, config=name, cache="none", **total, speedup=base["total_dense_s"] / total["total_s"],
                            **{f"{k}_s_per_step": v for k, v in steps[name].items()}))
    for cache, c in timed.items():
        schedule = schedules.get(cache)
        if schedule is None:
            continue
        overhead = c.computed_s - steps["balanced"]["cached"]
        about = dict(cache_overhead_s=overhead, skipped_s_per_step=c.skipped_s, schedule_source=schedule.get("source", ""))
        alone = compose_cache_alone(dense_s, resample(schedule["alone"]), c, overhead)
        records.append(dict(base, config="dense", cache=cache, **alone, speedup=base["total_dense_s"] / alone["total_s"],
                            computed_s_per_step=dense_s + overhead, **about))
        for name, cfg in configs.items():
            one = CacheSteps(steps[name]["cached"] + overhead, c.skipped_s)
            total = compose(cfg, steps[name], resample(schedule_for(schedule, cfg)), one, overhead)
            records.append(dict(base, config=name, cache=cache, **total, speedup=base["total_dense_s"] / total["total_s"],
                                computed_s_per_step=one.computed_s, **about))
    return records


BASE_FIELDS = ("key", "model", "height", "width", "num_frames", "tokens", "baseline", "steps", "dense_s_per_step",
               "total_dense_s", "tiny", "device")


def recompose(timings: dict, keys: list[str], caches: list[str], schedules: dict, cache_in_warmup: bool) -> list[dict]:
    """Records composed anew from the step times of an earlier run (`timings`: its step_cache_<gpu>.json),
    for new skip schedules or --cache-in-warmup, with no GPU: every time a total needs was measured
    there (the warm-up, profile and cached step of each preset; each cache's computed and skipped
    step). The real loops are not repeated."""
    records = []
    for key in keys:
        mine = [r for r in timings["records"] if r["key"] == key]
        rows = {(r["config"], r["cache"]): r for r in mine}
        if ("dense", "none") not in rows:
            raise ValueError(f"{key} is not in the timings (it has {sorted({r['key'] for r in timings['records']})})")
        base = {k: rows["dense", "none"][k] for k in BASE_FIELDS}
        base["cache_in_warmup"] = cache_in_warmup
        configs = cache_bench_configs(SPECS[key], base["tiny"], cache_in_warmup)
        steps = {name: {k: rows[name, "none"][f"{k}_s_per_step"] for k in ("warmup", "profile", "cached")}
                 for name in configs}
        timed = {cache: CacheSteps(rows["balanced", cache]["computed_s_per_step"], rows["balanced", cache]["skipped_s_per_step"])
                 for cache in caches if ("balanced", cache) in rows}
        if missing := [cache for cache in caches if cache not in timed and cache in schedules]:
            raise ValueError(f"the timings have no {missing} steps for {key}: time them on the GPU first")
        records += compose_records(base, configs, steps, timed, schedules)
    return records


def add_loops(records, handle, calls, configs, caches, schedules, steps, timed, timesteps, device, dtype, progress,
              warm_every_loop: bool = True):
    """Real 50-step loops of each preset with each cache at its chosen setting, beside the total
    composed from the schedule that loop made. An untimed loop first, for every loop where
    `warm_every_loop` (compiled calls), else once per preset (eager: the kernels it needs)."""
    warmed = set()
    for cache in caches:
        setting = schedules.get(cache, {}).get("config")
        if setting is None:
            continue
        overhead = timed[cache].computed_s - steps["balanced"]["cached"]
        for name, cfg in configs.items():
            handle.set_config(cfg)
            handle.set_cache(cache_config(cache, setting, dtype))
            if warm_every_loop or name not in warmed:
                calls.loop(timesteps)  # untimed: compiles what a real loop needs
                warmed.add(name)
            sync(device)
            recorder = ComputedCalls(SimpleNamespace(transformer=calls.model))
            seconds = wall_seconds(lambda: calls.loop(timesteps), device)
            recorder.close()
            made = loop_schedule(recorder, len(calls.bench.workload.calls),
                                 0 if cfg.cache_in_warmup else cfg.num_dense_steps(STEPS))
            one = CacheSteps(steps[name]["cached"] + overhead, timed[cache].skipped_s)
            composed = compose(cfg, steps[name], made, one, overhead)["total_s"]
            record = next(r for r in records if r["config"] == name and r["cache"] == cache)
            record.update(measured_total_s=seconds, loop_composed_s=composed, loop_skipped_steps=round(sum(made), 2),
                          loop_partly_skipped_steps=sum(0 < x < 1 for x in made),
                          measured_vs_composed=seconds / composed - 1.0,
                          loop_agrees=abs(seconds / composed - 1.0) <= LOOP_TOLERANCE)
            progress(f"loop {name} + {cache}: {seconds:.1f} s measured, {composed:.1f} s composed from its "
                     f"{sum(made):.1f} skipped steps ({record['loop_partly_skipped_steps']} in part; "
                     f"{record['measured_vs_composed']:+.1%})")
            handle.set_cache("none")


def cache_config(cache: str, setting: dict, dtype):
    """The diffusers config of `cache` at the setting the quality study chose (a dict of fields)."""
    if cache == "first-block":
        return FirstBlockCacheConfig(**setting)
    if cache == "mag":
        fields = dict(setting)
        fields["mag_ratios"] = torch.tensor(fields["mag_ratios"])
        return MagCacheConfig(**fields)
    return TaylorSeerCacheConfig(use_lite_mode=True, taylor_factors_dtype=dtype, **setting)


def schedule_for(schedule: dict, config) -> list[bool]:
    """The schedule the cache made beside the preset whose dense warm-up fraction is nearest `config`'s."""
    fraction = config.num_dense_steps(STEPS) / STEPS
    return schedule["by_dense_steps"][min(schedule["by_dense_steps"], key=lambda k: abs(float(k) - fraction))]


def attach_quality(records: list[dict], study: dict) -> None:
    """Each record's PSNR against dense on the bundled demo model, from the quality study's
    result (quality_step_cache.json): the row of the same preset and cache."""
    for r in records:
        name = r["config"] if r["cache"] == "none" else f"{r['config']}+{r['cache']}"
        row = study["rows"].get(name)
        if row is not None:
            r["demo_psnr"] = row["psnr"]


def load_schedules(path) -> dict:
    """cache name -> {"alone": [bool per step], "by_dense_steps": {fraction: [bool per step]},
    "config": {fields}, "source": "..."} (JSON, written by scripts/quality_step_cache.py)."""
    return json.loads(Path(path).read_text()) if path else {}


def write_results(out, records: list[dict], command: str, note: str | None = None) -> Path:
    """out/step_cache_<gpu>.json and .md, named by the records' GPU (step_cache_tiny for the CPU check)."""
    from .report import step_cache_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = any(r["tiny"] for r in records)
    stem = "step_cache_tiny" if tiny else f"step_cache_{gpu_tag(records[0]['device'])}"
    data = dict(records=records, command=command, targets=TARGETS, target_psnr=TARGET_PSNR, **({"note": note} if note else {}))
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text(step_cache_markdown(data))
    return out / f"{stem}.md"
