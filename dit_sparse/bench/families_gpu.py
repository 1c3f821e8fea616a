"""Every family's tiny pipeline on a CUDA GPU: the Triton path against the torch path and stock."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig

from .tiny_pipelines import tiny_pipeline

TINY_ENGINE = dict(block_size=16, num_sampled_queries=16, dense_steps=0, dense_layers=0)


def on_gpu(kwargs):
    return {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def run(pipe, call_kwargs):
    """The final latents of one generation, float32 on the CPU."""
    out = pipe(**on_gpu(call_kwargs()))
    frames = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(frames).float().cpu()


def with_config(module, config, offload=False):
    """A fresh tiny pipeline on the GPU (or under model CPU offload) with `config` applied:
    (its output, the handle)."""
    pipe = module.build()
    pipe = pipe.to("cuda") if not offload else pipe
    if offload:
        pipe.enable_model_cpu_offload()
    handle = dit_sparse.apply(pipe, config)
    return run(pipe, module.call_kwargs), handle


def check(name: str) -> dict:
    """One family's record: full bands (fixed density 1.0) on Triton and torch against stock,
    adaptive bands at recall 0.6 on both against each other, and for Wan CPU offload."""
    module = tiny_pipeline(name)
    stock = run(module.build().to("cuda"), module.call_kwargs)
    scale = float(stock.abs().max())
    record = dict(family=name, output_shape=list(stock.shape))
    for backend in ("triton", "torch"):
        out, handle = with_config(module, SparseAttentionConfig(density=1.0, backend=backend, **TINY_ENGINE))
        record[f"full_bands_{backend}_vs_stock"] = float((out - stock).abs().max()) / scale
        record[f"full_bands_{backend}_sparse_calls"] = handle.stats().sparse_calls
    outs, kinds = {}, {}
    for backend in ("triton", "torch"):
        outs[backend], handle = with_config(module, SparseAttentionConfig(recall=0.6, backend=backend, **TINY_ENGINE))
        stats = handle.stats()
        kinds[backend] = {layer: {b: v.kinds for b, v in branches.items()} for layer, branches in stats.layers.items()}
        record[f"adaptive_{backend}_mean_density"] = stats.mean_density
    record["adaptive_triton_vs_torch"] = float((outs["triton"] - outs["torch"]).abs().max()) / scale
    record["adaptive_same_kinds"] = kinds["triton"] == kinds["torch"]
    record["adaptive_vs_stock"] = float((outs["triton"] - stock).abs().max()) / scale
    if name == "wan":
        out, handle = with_config(module, SparseAttentionConfig(**TINY_ENGINE), offload=True)
        record["cpu_offload_finite"] = bool(torch.isfinite(out).all())
        record["cpu_offload_sparse_calls"] = handle.stats().sparse_calls
    print(json.dumps(record), flush=True)
    return record


def markdown(records: list[dict], device: str, command: str) -> str:
    lines = [f"# Families on {device}", "", f"Command: `{command}`", "",
             "Errors are max |difference| / max |stock output| on the final latents (float32 tiny models, "
             "block size 16). full bands = fixed density 1.0 (profiling + kernel, every key kept); "
             "adaptive = adaptive bands at recall 0.6 with no warm-up (kinds: the same heads chosen "
             "by the Triton and the torch profiling).", "",
             "| family | full bands triton vs stock | full bands torch vs stock | adaptive triton vs torch | same kinds | adaptive density | adaptive vs stock |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['family']} | error: {r['error']} ||||||")
            continue
        lines.append(
            f"| {r['family']} | {r['full_bands_triton_vs_stock']:.1e} | {r['full_bands_torch_vs_stock']:.1e} | "
            f"{r['adaptive_triton_vs_torch']:.1e} | {r['adaptive_same_kinds']} | {r['adaptive_triton_mean_density']:.2f} | "
            f"{r['adaptive_vs_stock']:.1e} |"
        )
    wan = next((r for r in records if r["family"] == "wan" and "cpu_offload_finite" in r), None)
    if wan:
        lines += ["", f"Wan with `enable_model_cpu_offload()`: finite output {wan['cpu_offload_finite']}, "
                      f"{wan['cpu_offload_sparse_calls']} sparse calls."]
    return "\n".join(lines) + "\n"


def check_families(names: list[str], out, command: str) -> str:
    """Check each family (an error is recorded and the rest still run), write
    out/families_gpu.json and .md; returns the Markdown."""
    records = []
    for name in names:
        try:
            records.append(check(name))
        except Exception as e:  # one family failing must not hide the others' results
            records.append(dict(family=name, error=f"{type(e).__name__}: {e}"))
            print(f"{name}: {type(e).__name__}: {e}", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    (out / "families_gpu.json").write_text(json.dumps(dict(device=device, command=command, records=records), indent=1))
    md = markdown(records, device, command)
    (out / "families_gpu.md").write_text(md)
    return md
