"""Wan2.1-1.3B at 720p on several GPUs under diffusers' Ulysses context parallelism, dense and
sparse, against one GPU: times per step (the slowest rank's), output equality and plan agreement."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

import dit_sparse

from .e2e import ProgressLog, StepCalls, compose, eager_calls, measure_sparse, measure_warmup, measurement_config
from .models import ModelUnderTest, prepare_model
from .report import multigpu_markdown
from .sdpa import sdpa_priority
from .specs import SPECS, STEPS, sparse_configs
from .timing import median_wall_seconds

SPEC = SPECS["wan1.3b-720"]
BF16_REL_L2 = 2.0 ** -7
SEED = 0


@dataclass(frozen=True)
class MultiGpuOptions:
    """What a run of the multi-GPU benchmark measures (the command line's options)."""

    config: str = "svg"  # the sparse settings, one of specs.SPARSE_CONFIGS
    repeats: int = 3  # timed steps per measurement
    tiny: bool = False  # scaled-down model on the CPU with gloo: a test of the code path
    command: str = ""  # the command line, recorded with the results


def allow_cpu_context_parallelism():
    """diffusers 0.42.1's enable_parallelism takes the rank's device as `rank %
    torch.accelerator.device_count()`, a division by zero without an accelerator; report one,
    which makes that device cpu:0 (the CPU). Only for --tiny on the CPU."""
    torch.accelerator.device_count = lambda: 1


def join_process_group(tiny: bool, local_rank: int) -> tuple[int, int, torch.device, torch.dtype]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    NCCL on the GPUs, or gloo on the CPU for --tiny. (rank, world size, device, dtype)."""
    if tiny:
        allow_cpu_context_parallelism()
        dist.init_process_group("gloo")
        device, dtype = torch.device("cpu"), torch.float32
    else:
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        device, dtype = torch.device("cuda", local_rank), torch.bfloat16
    return dist.get_rank(), dist.get_world_size(), device, dtype


def check_divisible(heads: int, tokens: int, world: int):
    """Ulysses splits the sequence into `world` shards and the heads into `world` groups."""
    if heads % world or tokens % world:
        raise ValueError(f"{heads} heads and {tokens} tokens must both divide by the {world} ranks of Ulysses")


def slowest(seconds: float, device) -> float:
    """The largest of every rank's `seconds`."""
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def compare(got: torch.Tensor, expected: torch.Tensor) -> dict:
    """Relative L2 and maximum error of `got` against `expected`; equal within bf16's 2^-7."""
    got, expected = got.float(), expected.float()
    rel_l2 = float((got - expected).norm() / expected.norm().clamp_min(1e-30))
    return dict(rel_l2=rel_l2, max_abs=float((got - expected).abs().max()),
                expected_max_abs=float(expected.abs().max()), equal=rel_l2 <= BF16_REL_L2)


def plan_patterns(handle) -> dict:
    """(layer, branch, first head, end head) -> the (B, H) pattern indices of the latest plans."""
    out = {}
    for (layer, branch), plan in handle.runtimes["transformer"].cache.plans.items():
        heads = plan.heads or range(plan.shape[1])
        out[(layer, branch, heads.start, heads.stop)] = plan.patterns.cpu()
    return out


def plan_agreement(sharded: dict, whole: dict) -> float:
    """Fraction of (layer, branch, batch item, head) whose sharded plan picks the pattern the
    whole-head plan picks for that global head."""
    same = total = 0
    for (layer, branch, start, stop), patterns in sharded.items():
        full = next(p for (l, b, _, _), p in whole.items() if (l, b) == (layer, branch))
        same += int((patterns == full[:, start:stop]).sum())
        total += patterns.numel()
    if total == 0:
        raise RuntimeError("no sparse plans to compare")
    return same / total


def broadcast_from_rank0(tensors):
    for t in tensors:
        dist.broadcast(t.data, src=0)


def dense_run(bench: ModelUnderTest, calls: StepCalls, repeats: int, device, log, name: str):
    """The first call's output at two steps and the dense step's time (slowest rank)."""
    t0, t1 = bench.two_timesteps()
    outputs = [calls.first_call(t0), calls.first_call(t1)]
    seconds = slowest(median_wall_seconds(lambda: calls.step(t0), device, repeats), device)
    log(f"{name}: dense step {seconds:.3f} s")
    return dict(dense_s_per_step=seconds), outputs


def sparse_run(bench: ModelUnderTest, calls: StepCalls, sparse, repeats: int, device, log, name: str):
    """With dit_sparse: the first call's output at a profiling step and a step under its plans,
    the plans, and the profiling, cached and warm-up steps' times (slowest rank)."""
    t0, t1 = bench.two_timesteps()
    handle = dit_sparse.apply(calls.module, measurement_config(sparse))
    outputs = [calls.first_call(t0), calls.first_call(t1)]  # a profiling step, then a step under its plans
    plans = plan_patterns(handle)
    expected = (bench.num_layers - sparse.dense_layers) * len(bench.workload.calls)
    m = measure_sparse(handle, calls, t0, t1, repeats, device, expected)
    warmup_s = measure_warmup(handle, calls.step, t0, sparse, bench.num_layers, repeats, device)
    dit_sparse.remove(calls.module)
    times = dict(profile_s_per_step=slowest(m.profile_s, device), cached_s_per_step=slowest(m.cached_s, device),
                 warmup_s_per_step=slowest(warmup_s, device), mean_density=m.mean_density)
    log(f"{name}: profiling step {times['profile_s_per_step']:.3f} s, cached step "
        f"{times['cached_s_per_step']:.3f} s, warm-up step {times['warmup_s_per_step']:.3f} s, "
        f"density {m.mean_density:.3f}")
    return times, outputs, plans


def add_totals(runs: dict, sparse):
    """50-step totals (sparse: composed as in the e2e benchmark) and speed-ups over 1gpu-dense."""
    for name, r in runs.items():
        dense_s = runs[name.replace("sparse", "dense")]["dense_s_per_step"]
        if name.endswith("dense"):
            r.update(total_s=STEPS * dense_s, n_dense_steps=STEPS)
        else:
            total = compose(sparse, r["warmup_s_per_step"], r["profile_s_per_step"], r["cached_s_per_step"])
            r.update(total_s=total.pop("total_sparse_s"), **total, dense_s_per_step=dense_s)
    for r in runs.values():
        r["speedup_vs_1gpu_dense"] = runs["1gpu-dense"]["total_s"] / r["total_s"]


def run(options: MultiGpuOptions, rank: int, world: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Build the same transformer and inputs on every rank, run 1gpu-dense, 1gpu-sparse, then
    with Ulysses Ngpu-dense and Ngpu-sparse; the record of the whole run."""
    progress = ProgressLog()
    log = progress if rank == 0 else (lambda msg: None)
    torch.manual_seed(SEED)
    bench = prepare_model(SPEC, options.tiny, device, dtype, log)
    config = bench.model.config
    check_divisible(config.num_attention_heads, bench.num_tokens, world)
    broadcast_from_rank0([*bench.model.parameters(), *bench.model.buffers()])
    broadcast_from_rank0([v for kwargs in bench.workload.calls for v in kwargs.values() if isinstance(v, torch.Tensor)])
    sparse = sparse_configs(SPEC, bench.num_layers, options.tiny)[options.config]
    height, width, num_frames = bench.size
    log(f"{SPEC.model} {height}x{width}x{num_frames}: {bench.num_tokens} tokens, {world} ranks, "
        f"{options.config}: {sparse}")
    eager = eager_calls(bench.model, bench.workload)
    calls = dataclasses.replace(eager, first_call=lambda t: eager.first_call(t).clone())  # a gathered output waits

    runs, outputs, n = {}, {}, f"{world}gpu"
    with torch.no_grad(), sdpa_priority():
        runs["1gpu-dense"], outputs["1gpu-dense"] = dense_run(bench, calls, options.repeats, device, log, "1gpu-dense")
        runs["1gpu-sparse"], outputs["1gpu-sparse"], whole_plans = sparse_run(
            bench, calls, sparse, options.repeats, device, log, "1gpu-sparse")
        dist.barrier()
        bench.model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
        runs[f"{n}-dense"], outputs[f"{n}-dense"] = dense_run(bench, calls, options.repeats, device, log, f"{n}-dense")
        runs[f"{n}-sparse"], outputs[f"{n}-sparse"], sharded_plans = sparse_run(
            bench, calls, sparse, options.repeats, device, log, f"{n}-sparse")

    add_totals(runs, sparse)
    equality = {
        f"{n}-{kind} vs 1gpu-{kind}": {step_name: compare(got, want) for step_name, got, want in
                                       zip(("step 1", "step 2"), outputs[f"{n}-{kind}"], outputs[f"1gpu-{kind}"])}
        for kind in ("sparse", "dense")
    }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return dict(
        model=SPEC.model, height=height, width=width, num_frames=num_frames, tokens=bench.num_tokens,
        text_len=bench.text_len, num_layers=bench.num_layers, heads=config.num_attention_heads, ranks=world,
        device=device_name, dtype=str(dtype).removeprefix("torch."), tiny=options.tiny, config=options.config,
        sparse_settings=dict(dense_steps=sparse.dense_steps, dense_layers=sparse.dense_layers,
                             refresh_every=sparse.refresh_every, density=sparse.density),
        steps=STEPS, repeats=options.repeats, runs=runs, equality=equality,
        plan_agreement=plan_agreement(sharded_plans, whole_plans),
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__), command=options.command,
    )


def run_and_write(options: MultiGpuOptions, out, local_rank: int) -> str | None:
    """On one rank under torchrun: join the process group, run, and on rank 0 write
    out/multigpu.json and .md (multigpu_tiny.* for --tiny); rank 0 returns the Markdown."""
    rank, world, device, dtype = join_process_group(options.tiny, local_rank)
    try:
        record = run(options, rank, world, device, dtype)
        md = None
        if rank == 0:
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            stem = "multigpu_tiny" if options.tiny else "multigpu"
            md = multigpu_markdown(record)
            (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
            (out / f"{stem}.md").write_text(md)
        dist.barrier()  # no rank leaves while another still exchanges (gloo aborts the process)
        return md
    finally:
        dist.destroy_process_group()
