"""Wan2.1-1.3B at 720p on several GPUs: diffusers' Ulysses context parallelism, dense and sparse.

    torchrun --nproc-per-node 2 scripts/bench_multigpu.py --out docs/results

Every rank builds the same transformer (the Wan2.1-T2V-1.3B config of scripts/configs/e2e,
random weights from one seed, broadcast from rank 0, bf16) and the same inputs, and calls it as
WanPipeline does (cond and uncond calls per step, 512 text tokens, 720x1280x81: 21 x 45 x 80 =
75,600 latent tokens), under `sdpa_kernel([cuDNN, ...], set_priority=True)` as bench_e2e.py.
Four runs, in this order on the same ranks:

- 1gpu-dense: stock processors, no parallelism (every rank alone on its GPU, at the same time);
- 1gpu-sparse: dit_sparse with the chosen config (default svg: Sparse VideoGen's settings);
- Ngpu-dense: `enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`, stock;
- Ngpu-sparse: the same with dit_sparse, whose processors hand the self-attention to the
  "dit_sparse" attention backend (after diffusers' all-to-all each rank holds the whole
  sequence for 12/N heads).

Times are per denoising step, the median of --repeats, the slowest rank's: the dense step, and
for sparse runs the profiling step, the cached step and a dense warm-up step through our
processors (as bench_e2e.py); 50-step totals are composed as there (n_dense x warm-up +
n_profile x profile + n_cached x cached), speed-ups are over 1gpu-dense.
Equality: the first call's output of two steps (step 1: the sparse runs profile; step 2: they
re-use those plans), N GPUs against one, sparse against sparse and (for comparison) dense against
dense: relative L2 error and maximum error, "equal" when the relative L2 error is within 2^-7
(bf16 keeps 8 significant bits). Plans: the fraction of
(layer, branch, head) whose N-GPU plan (keyed by global head) picks the one-GPU pattern.

Writes DIR/multigpu.json and DIR/multigpu.md. `--tiny` runs the same code on the CPU with gloo
(scaled-down model, float32, backend "torch"; start N processes as torchrun does) and writes
DIR/multigpu_tiny.*; its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import diffusers
import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

import dit_sparse
from dit_sparse.families import find_family

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_e2e as e2e  # noqa: E402

SPEC = e2e.SPECS["wan1.3b-720"]
BF16_REL_L2 = 2.0 ** -7
SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--config", default="svg", choices=e2e.SPARSE_CONFIGS, help="the sparse settings (bench_e2e's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--tiny", action="store_true",
                    help="scaled-down model on the CPU with gloo: a test of the code path")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    given = sys.argv[1:] if argv is None else argv
    args.command = "torchrun --nproc-per-node N scripts/bench_multigpu.py " + " ".join(given)
    return args


def allow_cpu_context_parallelism():
    """diffusers 0.42.1's enable_parallelism takes the rank's device as `rank %
    torch.accelerator.device_count()`, a division by zero without an accelerator; report one,
    which makes that device cpu:0 (the CPU). Only for --tiny on the CPU."""
    torch.accelerator.device_count = lambda: 1


def setup(tiny: bool) -> tuple[int, int, torch.device, torch.dtype]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    NCCL on the GPUs, or gloo on the CPU for --tiny. (rank, world size, device, dtype)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        sys.exit("bench_multigpu runs under torchrun: torchrun --nproc-per-node 2 scripts/bench_multigpu.py ...")
    if tiny:
        allow_cpu_context_parallelism()
        dist.init_process_group("gloo")
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_multigpu needs CUDA GPUs (or --tiny for the CPU check)")
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        device, dtype = torch.device("cuda", local_rank), torch.bfloat16
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        sys.exit(f"bench_multigpu needs at least 2 processes (GPUs), got WORLD_SIZE={world}")
    return rank, world, device, dtype


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


def run(args, rank: int, world: int, device: torch.device, dtype: torch.dtype) -> dict:
    config = e2e.load_config(SPEC, args.tiny)
    height, width, num_frames, text_len = e2e.run_size(SPEC, args.tiny)
    grid = e2e.token_grid(SPEC.family, config, height, width, num_frames)
    tokens = grid[0] * grid[1] * grid[2]
    check_divisible(config["num_attention_heads"], tokens, world)
    torch.manual_seed(SEED)
    model = e2e.build_transformer(config, device, dtype)
    broadcast_from_rank0([*model.parameters(), *model.buffers()])
    layers = len(find_family(model).self_attention(model))
    calls, timestep_of = e2e.make_inputs(SPEC, model, config, (height, width, num_frames), text_len, device, dtype)
    broadcast_from_rank0([v for kwargs in calls for v in kwargs.values() if isinstance(v, torch.Tensor)])
    timesteps = [timestep_of(t) for t in e2e.schedule(SPEC, tokens)]
    values = [float(t.max()) for t in timesteps]
    t0, t1 = timesteps[0], timesteps[next(i for i, v in enumerate(values) if v < values[0])]
    sparse = e2e.sparse_configs(SPEC, layers, args.tiny)[args.config]
    log = (lambda msg: e2e.log(msg)) if rank == 0 else (lambda msg: None)
    log(f"{SPEC.model} {height}x{width}x{num_frames}: {tokens} tokens, {world} ranks, {args.config}: {sparse}")

    def step(t):
        for kwargs in calls:
            model(**kwargs, timestep=t, return_dict=False)

    def first_call(t):
        return model(**calls[0], timestep=t, return_dict=False)[0].clone()  # clone: a gathered output waits

    def dense_run(name):
        outputs = [first_call(t0), first_call(t1)]
        seconds = slowest(statistics.median(e2e.timed(lambda: step(t0), device) for _ in range(args.repeats)), device)
        log(f"{name}: dense step {seconds:.3f} s")
        return dict(dense_s_per_step=seconds), outputs

    def sparse_run(name):
        handle = dit_sparse.apply(model, e2e.measurement_config(sparse))
        outputs = [first_call(t0), first_call(t1)]  # a profiling step, then a step under its plans
        plans = plan_patterns(handle)
        expected = (layers - sparse.dense_layers) * len(calls)
        m = e2e.measure_sparse(handle, step, first_call, t0, t1, args.repeats, device, expected)
        warmup_s = e2e.measure_warmup(handle, step, t0, sparse, layers, args.repeats, device)
        dit_sparse.remove(model)
        times = dict(profile_s_per_step=slowest(m["profile_s"], device),
                     cached_s_per_step=slowest(m["cached_s"], device),
                     warmup_s_per_step=slowest(warmup_s, device), mean_density=m["mean_density"])
        log(f"{name}: profiling step {times['profile_s_per_step']:.3f} s, cached step "
            f"{times['cached_s_per_step']:.3f} s, warm-up step {times['warmup_s_per_step']:.3f} s, "
            f"density {m['mean_density']:.3f}")
        return times, outputs, plans

    runs, outputs = {}, {}
    with torch.no_grad(), e2e.sdpa_priority():
        runs["1gpu-dense"], outputs["1gpu-dense"] = dense_run("1gpu-dense")
        runs["1gpu-sparse"], outputs["1gpu-sparse"], whole_plans = sparse_run("1gpu-sparse")
        dist.barrier()
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
        n = f"{world}gpu"
        runs[f"{n}-dense"], outputs[f"{n}-dense"] = dense_run(f"{n}-dense")
        runs[f"{n}-sparse"], outputs[f"{n}-sparse"], sharded_plans = sparse_run(f"{n}-sparse")

    for name, r in runs.items():
        dense_s = runs[name.replace("sparse", "dense")]["dense_s_per_step"]
        if name.endswith("dense"):
            r.update(total_s=e2e.STEPS * dense_s, n_dense_steps=e2e.STEPS)
        else:
            total = e2e.compose(sparse, r["warmup_s_per_step"], r["profile_s_per_step"], r["cached_s_per_step"])
            r.update(total_s=total.pop("total_sparse_s"), **total, dense_s_per_step=dense_s)
    for r in runs.values():
        r["speedup_vs_1gpu_dense"] = runs["1gpu-dense"]["total_s"] / r["total_s"]
    equality = {
        f"{n}-{kind} vs 1gpu-{kind}": {step_name: compare(got, want) for step_name, got, want in
                                       zip(("step 1", "step 2"), outputs[f"{n}-{kind}"], outputs[f"1gpu-{kind}"])}
        for kind in ("sparse", "dense")
    }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return dict(
        model=SPEC.model, height=height, width=width, num_frames=num_frames, tokens=tokens, text_len=text_len,
        num_layers=layers, heads=config["num_attention_heads"], ranks=world, device=device_name,
        dtype=str(dtype).removeprefix("torch."), tiny=args.tiny, config=args.config,
        sparse_settings=dict(dense_steps=sparse.dense_steps, dense_layers=sparse.dense_layers,
                             refresh_every=sparse.refresh_every, density=sparse.density),
        steps=e2e.STEPS, repeats=args.repeats, runs=runs, equality=equality,
        plan_agreement=plan_agreement(sharded_plans, whole_plans),
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__), command=args.command,
    )


def markdown(record: dict) -> str:
    n = record["ranks"]
    s = record["sparse_settings"]
    lines = [
        f"# {record['model']} at {record['height']}x{record['width']}x{record['num_frames']} on {n} GPUs "
        f"({record['device']}, Ulysses)", "",
        *(["`--tiny`: a scaled-down model on the CPU with gloo, a check of the code path; its times mean nothing.", ""]
          if record["tiny"] else []),
        f"{record['tokens']} latent tokens, {record['heads']} heads, {record['num_layers']} layers, {record['dtype']}, "
        f"random weights; cond + uncond calls per step. Sparse settings `{record['config']}`: {s['dense_steps']} dense "
        f"steps of {record['steps']}, {s['dense_layers']} dense layer(s), density {s['density']}, refresh every "
        f"{s['refresh_every']}. Times per step: median of {record['repeats']}, slowest rank; {record['steps']}-step "
        "totals composed from warm-up, profiling and cached steps (scripts/bench_multigpu.py).", "",
        "| run | dense s/step | warm-up s/step | profile s/step | cached s/step | density | 50 steps s | "
        "speed-up over 1 GPU dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in record["runs"].items():
        sparse = "profile_s_per_step" in r
        cells = [f"{r['dense_s_per_step']:.3f}", f"{r['warmup_s_per_step']:.3f}" if sparse else "-",
                 f"{r['profile_s_per_step']:.3f}" if sparse else "-",
                 f"{r['cached_s_per_step']:.3f}" if sparse else "-", f"{r['mean_density']:.3f}" if sparse else "1.000"]
        lines.append(f"| {name} | {' | '.join(cells)} | {r['total_s']:.1f} | {r['speedup_vs_1gpu_dense']:.2f}x |")
    lines += ["", f"## {n} GPUs against one: the first call's output (equal: relative L2 error <= 2^-7)", "",
              "Step 1: the sparse runs profile every sparse layer; step 2: they attend under those plans.", "",
              "| comparison | step | relative L2 | max abs error | max abs value | equal |",
              "|---|---|---|---|---|---|"]
    for comparison, by_step in record["equality"].items():
        for step_name, c in by_step.items():
            lines.append(f"| {comparison} | {step_name} | {c['rel_l2']:.2e} | {c['max_abs']:.3g} | "
                         f"{c['expected_max_abs']:.3g} | {'yes' if c['equal'] else 'NO'} |")
    lines += ["", f"Plans: {record['plan_agreement']:.1%} of (layer, branch, head) pick the one-GPU pattern of their "
                  "global head.", "", f"Command: `{record['command']}`; torch {record['versions']['torch']}, diffusers "
                  f"{record['versions']['diffusers']}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    rank, world, device, dtype = setup(args.tiny)
    try:
        record = run(args, rank, world, device, dtype)
        if rank == 0:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            stem = "multigpu_tiny" if args.tiny else "multigpu"
            (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
            (out / f"{stem}.md").write_text(markdown(record))
            print(markdown(record), flush=True)
        dist.barrier()  # no rank leaves while another still exchanges (gloo aborts the process)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
