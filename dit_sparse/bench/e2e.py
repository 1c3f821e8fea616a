"""End-to-end speed per denoising step: the dense step, and per sparse config the profiling and
cached steps, composed into 50-step totals; optionally the real 50-step loop and a kernel trace."""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig
from dit_sparse.generation import compile_blocks
from dit_sparse.geometry import TokenGrid

from .models import ModelUnderTest, Workload, prepare_model
from .report import e2e_markdown, merge_e2e
from .sdpa import first_backend, recording_sdpa, sdpa_priority
from .specs import SPECS, STEPS, sparse_configs
from .timing import gpu_tag, median_wall_seconds, op_seconds, wall_seconds
from .trace import trace_step

FULL_LOOP_CONFIGS = ("dense", "svg", "balanced")
LOOP_TOLERANCE = 0.03
EQUAL_REL_L2 = 2 ** -7  # bf16's epsilon
EQUAL_FACTOR = 1.1
"""Compiled equals eager for a sparse config when their outputs differ by no more than stock dense's
compiled and eager outputs do (x EQUAL_FACTOR), or by at most EQUAL_REL_L2: Inductor's fused
kernels round bf16 differently from eager's op-by-op code, and over many random-weight blocks
that alone is ~1.5% relative L2 on the H200."""


@dataclass(frozen=True)
class RunOptions:
    """What a run of the benchmark measures (the command line's options)."""

    repeats: int = 3  # timed steps per measurement (fewer where the entry says so)
    full_loop: bool = False  # also run the real 50 steps of the entries that allow it
    tiny: bool = False  # scaled-down models on the CPU: a test of the code path
    trace: bool = False  # torch.profiler trace of one cached svg step (GPU)
    command: str = ""  # the command line, recorded with the results
    baselines: tuple[str, ...] = ("eager",)  # how the transformer runs, dense and sparse alike: BASELINES


class ProgressLog:
    """Prints messages with the seconds since it was made."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, msg: str):
        print(f"[{time.perf_counter() - self.start:7.1f}s] {msg}", flush=True)

    def for_model(self, key: str) -> Callable[[str], None]:
        """A log whose messages name `key` and the seconds since this call."""
        start = time.perf_counter()
        return lambda msg: self(f"{key} (+{time.perf_counter() - start:.0f}s): {msg}")


@dataclass(frozen=True)
class StepCalls:
    """How the benchmark runs a transformer: `module` is what `dit_sparse.apply` wraps,
    `step(t)` makes every call of one denoising step at timestep t, `first_call(t)` makes the
    step's first call alone and returns its output."""

    module: torch.nn.Module
    step: Callable[[torch.Tensor], None]
    first_call: Callable[[torch.Tensor], torch.Tensor]
    compiled: bool = False  # calls go through torch.compile (`torch.compiler.set_stance("force_eager")` undoes it)


def eager_calls(model: torch.nn.Module, workload: Workload) -> StepCalls:
    """The transformer called as it is. A function of this signature is the seam for other ways
    of running it (e.g. compiled: `run_model(..., make_calls=...)`)."""

    def step(t):
        for kwargs in workload.calls:
            model(**kwargs, timestep=t, return_dict=False)

    def first_call(t):
        return model(**workload.calls[0], timestep=t, return_dict=False)[0]

    return StepCalls(model, step, first_call)


def compiled_calls(model: torch.nn.Module, workload: Workload, hookable: bool = False) -> StepCalls:
    """The transformer with its blocks compiled as diffusers documents
    (`compile_repeated_blocks(fullgraph=True)`, Inductor; each block for CogVideoX), the way
    `dit-sparse --compile` does; dit_sparse applied later swaps the processors inside them, and
    the blocks recompile for each mode (dense, profile, cached). `hookable`: each block's forward
    compiled instead, so that a step cache's hooks wrap the compiled blocks (`compile_blocks`)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    compile_blocks(model, hookable)
    return dataclasses.replace(eager_calls(model, workload), compiled=True)


BASELINES = {"eager": eager_calls, "compiled": compiled_calls}
"""How the benchmark runs the transformer; every record says which (its `baseline`)."""


def run_loop(calls: StepCalls, timesteps) -> None:
    """Every step of a generation, one after the other."""
    for t in timesteps:
        calls.step(t)


# ---- configs and the 50-step total -----------------------------------------------------------

def measurement_config(config: SparseAttentionConfig) -> SparseAttentionConfig:
    """The config the per-step times are measured with: no warm-up steps, plans never refreshed,
    so a step right after a reset profiles and every later one re-uses the plans. In
    fixed-density mode `recall` plays no part, so it is set to the default: configs that differ
    only in it share one measurement."""
    fields = dict(dense_steps=0, refresh_every=0)
    if config.density is not None:
        fields["recall"] = SparseAttentionConfig.recall
    return dataclasses.replace(config, **fields)


def profile_steps(num_sparse: int, refresh_every: int) -> int:
    """How many of `num_sparse` sparse steps profile: the first, then every `refresh_every`."""
    if num_sparse <= 0:
        return 0
    if refresh_every == 0:
        return 1
    return math.ceil(num_sparse / refresh_every)


def compose(config: SparseAttentionConfig, dense_s: float, profile_s: float, cached_s: float, steps: int = STEPS) -> dict:
    """The total of `steps` steps from the per-step times."""
    n_dense = config.num_dense_steps(steps)
    n_profile = profile_steps(steps - n_dense, config.refresh_every)
    n_cached = steps - n_dense - n_profile
    total = n_dense * dense_s + n_profile * profile_s + n_cached * cached_s
    return dict(n_dense_steps=n_dense, n_profile_steps=n_profile, n_cached_steps=n_cached, total_sparse_s=total)


def agreement(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """How close two outputs of the same call are: relative L2 error, largest absolute error
    (beside the largest absolute value) and cosine similarity."""
    a, b = output.float().flatten(), reference.float().flatten()
    rel_l2 = float((a - b).norm() / b.norm().clamp_min(1e-30))
    return dict(rel_l2=rel_l2, max_abs=float((a - b).abs().max()), expected_max_abs=float(b.abs().max()),
                cosine=float(torch.nn.functional.cosine_similarity(a, b, dim=0)))


def judge_agreement(records: list[dict]) -> None:
    """Mark each sparse record's compiled-vs-eager agreement equal or not against the tolerance
    its model's stock dense record sets (EQUAL_FACTOR); the dense record is the reference."""
    dense = next((r["compiled_vs_eager"] for r in records if r["config"] == "dense" and r.get("compiled_vs_eager")), None)
    for r in records:
        match = r.get("compiled_vs_eager")
        if not match:
            continue
        if r["config"] == "dense":
            match.update(tolerance=None, equal=None)
            continue
        tolerance = max(EQUAL_REL_L2, EQUAL_FACTOR * dense["rel_l2"]) if dense else EQUAL_REL_L2
        match.update(tolerance=tolerance, equal=match["rel_l2"] <= tolerance)


def eager_reference(first_call, t) -> torch.Tensor:
    """The step's first call with torch.compile's code bypassed (the same modules, run eagerly)."""
    with torch.compiler.set_stance("force_eager"):
        return first_call(t)


# ---- measurements ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DenseStep:
    """The stock dense step: its time, whether its output is finite, and its self-attention
    (the SDPA calls timed alone at their shapes, the backend SDPA picks, the sequence length)."""

    seconds: float
    finite: bool
    attention_s: float
    backends: tuple[str, ...]
    sequence_length: int
    compiled_vs_eager: dict | None = None  # agreement of the compiled first call with the eager one

    @property
    def attention_share(self) -> float:
        return self.attention_s / self.seconds


@dataclass(frozen=True)
class SparseSteps:
    """One sparse config's profiling step (after a reset) and cached step (the next)."""

    profile_s: float
    cached_s: float
    mean_density: float
    compiled_vs_eager: dict | None = None  # a cached call's output compiled against eager (same config)


@dataclass
class SparseRuns:
    """Everything measured with dit_sparse applied: per-step times by measurement config, the
    dense warm-up step through our processors, full loops, the trace and the grid the runtime saw."""

    steps: dict[tuple, SparseSteps]
    warmup_s: float
    loops: dict[str, float]
    loop_profiles: dict[str, int]
    trace: dict | None
    grid_seen: TokenGrid | None

    def of(self, config: SparseAttentionConfig) -> SparseSteps:
        return self.steps[dataclasses.astuple(measurement_config(config))]


def measure_dense(bench: ModelUnderTest, calls: StepCalls, repeats: int, device, progress,
                  eager: DenseStep | None = None) -> DenseStep:
    """The stock step's time (median of `repeats`), and its self-attention calls, which must all
    go through scaled_dot_product_attention (so that the SDPA backend context governs them).
    The calls are recorded from an eager first call (compiled code bypassed); with `eager` (the
    same model's eager measurement) they are not recorded again. Compiled calls are also
    compared with that eager first call."""
    t0, _ = bench.two_timesteps()
    reference = None
    if eager is None:
        with recording_sdpa() as seen:
            reference = eager_reference(calls.first_call, t0)
    elif calls.compiled:
        reference = eager_reference(calls.first_call, t0)
    output = calls.first_call(t0)  # compiles, for compiled calls
    finite = bool(torch.isfinite(output).all())
    match = agreement(output, reference) if calls.compiled else None
    seconds = median_wall_seconds(lambda: calls.step(t0), device, repeats)
    num_calls = len(bench.workload.calls)
    kind = "compiled" if calls.compiled else "eager"
    progress(f"dense step {seconds:.3f} s ({kind}, {num_calls} call(s), median of {repeats})")
    if match is not None:
        progress(f"dense compiled vs eager: relative L2 {match['rel_l2']:.2e}, cosine {match['cosine']:.6f}")
    if eager is not None:
        return dataclasses.replace(eager, seconds=seconds, finite=finite, compiled_vs_eager=match)

    self_calls = [c for c in seen if c.is_self_attention(bench.num_tokens, bench.text_len)]
    if len(self_calls) != bench.num_layers:
        raise RuntimeError(f"{len(self_calls)} self-attention calls went through scaled_dot_product_attention, "
                           f"expected {bench.num_layers}: the SDPA backend context would not govern them all")
    groups = Counter(c.key for c in self_calls)
    example = {c.key: c for c in self_calls}
    attention_s = num_calls * sum(n * op_seconds(example[k].run(), device) for k, n in groups.items())
    dense = DenseStep(seconds, finite, attention_s, tuple(sorted({first_backend(example[k]) for k in groups})),
                      self_calls[0].sequence_length, match)
    progress(f"self-attention alone {attention_s:.3f} s a step = {dense.attention_share:.1%} "
             f"(S = {dense.sequence_length}, SDPA backend {list(dense.backends)})")
    return dense


def measure_warmup(handle, step, t, config: SparseAttentionConfig, layers: int, repeats, device) -> float:
    """A dense warm-up step through our processors (every layer dense; HunyuanVideo's attend the
    valid tokens unmasked, Wan's apply the one-pass RoPE): median seconds over `repeats`, after
    an untimed step. Leaves the handle on that all-dense config."""
    handle.set_config(dataclasses.replace(measurement_config(config), dense_layers=layers))
    step(t)
    return median_wall_seconds(lambda: step(t), device, repeats)


def measure_sparse(handle, calls: StepCalls, t0, t1, repeats, device, expected_profiles) -> SparseSteps:
    """Profiling step (after a reset) and cached step (the next), median over `repeats`, after
    an untimed profiling and cached first call (kernel compilation, the grid's pattern bank, and
    for compiled calls the graphs of both). Compiled calls are also compared with eager ones:
    the same profiling and cached first calls with compiled code bypassed."""
    handle.reset()
    calls.first_call(t0)
    output = calls.first_call(t1)
    match = None
    if calls.compiled:
        handle.reset()
        with torch.compiler.set_stance("force_eager"):
            calls.first_call(t0)
            match = agreement(output, calls.first_call(t1))
    profile, cached = [], []
    for _ in range(repeats):
        handle.reset()
        profile.append(wall_seconds(lambda: calls.step(t0), device))
        cached.append(wall_seconds(lambda: calls.step(t1), device))
    stats = handle.stats()
    if stats.num_profiles != expected_profiles:
        raise RuntimeError(f"a profiling step profiled {stats.num_profiles} times, expected {expected_profiles}")
    return SparseSteps(statistics.median(profile), statistics.median(cached), stats.mean_density, match)


def measure_sparse_configs(bench: ModelUnderTest, calls: StepCalls, configs: dict[str, SparseAttentionConfig],
                           repeats: int, options: RunOptions, device, progress) -> SparseRuns:
    """Apply dit_sparse and measure every config (configs that share a measurement config once),
    the dense warm-up step, the full loops asked for and the trace; then remove it again."""
    t0, t1 = bench.two_timesteps()
    layers, num_calls = bench.num_layers, len(bench.workload.calls)
    full_loop = options.full_loop and bench.spec.full_loop
    handle = dit_sparse.apply(calls.module, measurement_config(configs["svg"]))
    steps, loops, loop_profiles = {}, {}, {}
    for name, cfg in configs.items():
        key = dataclasses.astuple(measurement_config(cfg))
        if key not in steps:
            handle.set_config(measurement_config(cfg))
            expected = (layers - cfg.dense_layers) * num_calls
            steps[key] = m = measure_sparse(handle, calls, t0, t1, repeats, device, expected)
            progress(f"{name}: profile step {m.profile_s:.3f} s, cached step {m.cached_s:.3f} s, "
                     f"density {m.mean_density:.3f}")
            if m.compiled_vs_eager is not None:
                progress(f"{name} compiled vs eager: relative L2 {m.compiled_vs_eager['rel_l2']:.2e}, "
                         f"cosine {m.compiled_vs_eager['cosine']:.6f}")
    warmup_s = measure_warmup(handle, calls.step, t0, configs["svg"], layers, repeats, device)
    progress(f"dense step through dit_sparse {warmup_s:.3f} s")
    if full_loop:  # re-profiling a plan (in place) is the one kind of call not yet made: compile it too
        handle.set_config(dataclasses.replace(measurement_config(configs["svg"]), refresh_every=1))
        calls.first_call(t0)
        calls.first_call(t1)
    for name, cfg in configs.items():  # every kind of call has run once: no compilation inside a loop
        if full_loop and name in FULL_LOOP_CONFIGS:
            handle.set_config(cfg)
            loops[name] = wall_seconds(lambda: run_loop(calls, bench.timesteps), device)
            loop_profiles[name] = handle.stats().num_profiles
            progress(f"full loop {name}: {loops[name]:.1f} s")
    trace = None
    if options.trace and device.type == "cuda":
        handle.set_config(measurement_config(configs["svg"]))
        calls.step(t0)  # profiles; the traced step re-uses the plans
        trace = trace_step(lambda: calls.step(t1), device)
        progress(f"traced cached svg step: {trace['gpu_busy_s']:.3f} s of kernels in {trace['wall_s']:.3f} s")
    grid_seen = handle.runtimes["transformer"].grid
    dit_sparse.remove(calls.module)
    return SparseRuns(steps, warmup_s, loops, loop_profiles, trace, grid_seen)


# ---- records ---------------------------------------------------------------------------------

def model_records(bench: ModelUnderTest, dense: DenseStep, sparse: SparseRuns,
                  configs: dict[str, SparseAttentionConfig], repeats: int, options: RunOptions,
                  device, dtype) -> list[dict]:
    """One record per config: dense, then each sparse config with its composed 50-step total."""
    spec, (height, width, num_frames) = bench.spec, bench.size
    values = [float(t.max()) for t in bench.timesteps]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    base = dict(
        key=spec.key, model=spec.model, height=height, width=width, num_frames=num_frames, tokens=bench.num_tokens,
        sequence_length=dense.sequence_length, steps=STEPS, calls_per_step=len(bench.workload.calls),
        num_layers=bench.num_layers, attention_share=dense.attention_share,
        dense_sdpa_backend="/".join(dense.backends), distinct_timesteps=len(set(values)), finite_output=dense.finite,
        dense_s_per_step=dense.seconds, total_dense_s=STEPS * dense.seconds, repeats=repeats, device=device_name,
        dtype=str(dtype).removeprefix("torch."), tiny=options.tiny, command=options.command,
    )
    records = [dict(base, config="dense", sparse_s_per_step=dense.seconds, profile_s_per_step=dense.seconds,
                    mean_density=1.0, speedup=1.0, total_sparse_s=STEPS * dense.seconds, dense_steps=STEPS,
                    dense_layers=bench.num_layers, refresh_every=None, density=1.0,
                    compiled_vs_eager=dense.compiled_vs_eager)]
    for name, cfg in configs.items():
        m = sparse.of(cfg)
        total = compose(cfg, sparse.warmup_s, m.profile_s, m.cached_s)
        records.append(dict(
            base, config=name, sparse_s_per_step=m.cached_s, profile_s_per_step=m.profile_s,
            warmup_s_per_step=sparse.warmup_s,
            mean_density=m.mean_density, speedup=base["total_dense_s"] / total["total_sparse_s"],
            speedup_vs_warmup=STEPS * sparse.warmup_s / total["total_sparse_s"], **total,
            dense_steps=cfg.dense_steps, dense_layers=cfg.dense_layers, refresh_every=cfg.refresh_every,
            density=cfg.density, recall=cfg.recall, compiled_vs_eager=m.compiled_vs_eager,
        ))
    judge_agreement(records)
    return records


def add_loop_results(records: list[dict], loops: dict[str, float], loop_profiles: dict[str, int],
                     bench: ModelUnderTest, progress):
    """Put the measured 50-step loops beside the composed totals they must agree with."""
    for r in records:
        if r["config"] not in loops:
            continue
        composed = r["total_sparse_s"]
        r["measured_total_s"] = loops[r["config"]]
        r["measured_vs_composed"] = loops[r["config"]] / composed - 1.0
        r["loop_agrees"] = abs(r["measured_vs_composed"]) <= LOOP_TOLERANCE
        if r["config"] != "dense":
            r["loop_num_profiles"] = loop_profiles[r["config"]]
            r["loop_expected_profiles"] = (r["n_profile_steps"] * (bench.num_layers - r["dense_layers"])
                                           * len(bench.workload.calls))
        progress(f"{r['config']}: 50 steps measured {r['measured_total_s']:.1f} s, composed {composed:.1f} s "
                 f"({r['measured_vs_composed']:+.1%}, {'agree' if r['loop_agrees'] else 'DISAGREE'})")


# ---- one model, every model ------------------------------------------------------------------

def run_model(spec, options: RunOptions, device: torch.device, dtype: torch.dtype, log: ProgressLog,
              baseline: str = "eager", eager_dense: DenseStep | None = None) -> tuple[list[dict], DenseStep]:
    """Build one entry's transformer, run it as `baseline` says, measure it dense and under every
    sparse config, and return its records and the dense measurement."""
    progress = log.for_model(f"{spec.key} {baseline}")
    bench = prepare_model(spec, options.tiny, device, dtype, progress)
    calls = BASELINES[baseline](bench.model, bench.workload)
    repeats = spec.repeats(options.repeats)
    configs = sparse_configs(spec, bench.num_layers, options.tiny)
    with torch.no_grad(), sdpa_priority():
        dense = measure_dense(bench, calls, repeats, device, progress, eager_dense)
        dense_loop = {}
        if options.full_loop and spec.full_loop:
            dense_loop["dense"] = wall_seconds(lambda: run_loop(calls, bench.timesteps), device)
            progress(f"full loop dense: {dense_loop['dense']:.1f} s")
        sparse = measure_sparse_configs(bench, calls, configs, repeats, options, device, progress)
    if sparse.grid_seen != bench.grid:
        raise RuntimeError(f"the runtime saw the grid {sparse.grid_seen}, expected {bench.grid}")

    records = model_records(bench, dense, sparse, configs, repeats, options, device, dtype)
    add_loop_results(records, {**dense_loop, **sparse.loops}, sparse.loop_profiles, bench, progress)
    for r in records[1:]:
        progress(f"{r['config']}: 50 steps {r['total_sparse_s']:.1f} s vs dense {r['total_dense_s']:.1f} s "
                 f"= {r['speedup']:.2f}x")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        progress(f"peak GPU memory after building: {peak:.1f} GiB")
        for r in records:
            r["peak_gpu_gib"] = peak
    if sparse.trace is not None:
        next(r for r in records if r["config"] == "svg")["trace"] = sparse.trace
    for r in records:
        r["baseline"] = baseline
    return records, dense


def bench_device(tiny: bool) -> tuple[torch.device, torch.dtype]:
    """The CPU in float32 for --tiny, else the GPU in bfloat16."""
    if tiny:
        return torch.device("cpu"), torch.float32
    if not torch.cuda.is_available():
        raise RuntimeError("bench_e2e needs a CUDA GPU (or --tiny for the CPU check)")
    return torch.device("cuda"), torch.bfloat16


def run_models(keys: list[str], out, options: RunOptions) -> dict:
    """Run each entry in turn (one failing, e.g. out of memory, is recorded and the rest still
    run) and merge its records into out/e2e_<gpu>.json and .md (e2e_tiny for --tiny) at once;
    returns the merged data."""
    device, dtype = bench_device(options.tiny)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "e2e_tiny" if options.tiny else f"e2e_{gpu_tag(torch.cuda.get_device_name(device))}"
    threads = torch.get_num_threads()
    if options.tiny:  # one thread: tiny ops gain nothing from more, and a busy core stalls them
        torch.set_num_threads(1)
    log = ProgressLog()
    try:
        for key in keys:
            eager = None
            for baseline in options.baselines:
                records, errors = [], []
                try:
                    records, dense = run_model(SPECS[key], options, device, dtype, log, baseline, eager)
                    eager = dense if baseline == "eager" else eager
                except Exception as e:  # one model failing must not lose the others
                    traceback.print_exc()
                    errors.append(dict(key=key, baseline=baseline, error=f"{type(e).__name__}: {e}"))
                    log(f"{key} {baseline}: {type(e).__name__}: {e}")
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                data = merge_e2e(out / f"{stem}.json", records, errors, options.command)
                (out / f"{stem}.md").write_text(e2e_markdown(data))
    finally:
        torch.set_num_threads(threads)
    return data
