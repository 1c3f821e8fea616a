"""Every supported family on a CUDA GPU: the Triton path against the torch path and stock.

Builds the tiny pipelines of the family tests (tests/test_family_*.py: `build()` and
`call_kwargs()`) on the GPU and, per family:
- stock output;
- fixed density 1.0 (every head profiled, bands that cover every key) on the Triton kernels
  and on the PyTorch reference: both against stock;
- adaptive bands with a low acceptance threshold (recall 0.6, no warm-up: random weights
  attend almost uniformly, so the default threshold keeps every head dense) on Triton and
  torch: the head kinds chosen and the outputs against each other;
- Wan only: with `enable_model_cpu_offload()`.

    python scripts/check_families_gpu.py --out docs/results
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

import dit_sparse
from dit_sparse import SparseAttentionConfig

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("wan", "cogvideox", "hunyuan_video", "ltx", "flux", "sd3", "qwenimage")
TINY = dict(block_size=16, num_sampled_queries=16, dense_steps=0, dense_layers=0)


def on_gpu(kwargs):
    return {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def run(pipe, call_kwargs):
    out = pipe(**on_gpu(call_kwargs()))
    frames = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(frames).float().cpu()


def with_config(module, config, offload=False):
    pipe = module.build()
    pipe = pipe.to("cuda") if not offload else pipe
    if offload:
        pipe.enable_model_cpu_offload()
    handle = dit_sparse.apply(pipe, config)
    return run(pipe, module.call_kwargs), handle


def check(name):
    module = importlib.import_module(f"test_family_{name}")
    stock = run(module.build().to("cuda"), module.call_kwargs)
    scale = float(stock.abs().max())
    record = dict(family=name, output_shape=list(stock.shape))
    for backend in ("triton", "torch"):
        out, handle = with_config(module, SparseAttentionConfig(density=1.0, backend=backend, **TINY))
        record[f"full_bands_{backend}_vs_stock"] = float((out - stock).abs().max()) / scale
        record[f"full_bands_{backend}_sparse_calls"] = handle.stats().sparse_calls
    outs, kinds = {}, {}
    for backend in ("triton", "torch"):
        outs[backend], handle = with_config(module, SparseAttentionConfig(recall=0.6, backend=backend, **TINY))
        stats = handle.stats()
        kinds[backend] = {layer: {b: v.kinds for b, v in branches.items()} for layer, branches in stats.layers.items()}
        record[f"adaptive_{backend}_mean_density"] = stats.mean_density
    record["adaptive_triton_vs_torch"] = float((outs["triton"] - outs["torch"]).abs().max()) / scale
    record["adaptive_same_kinds"] = kinds["triton"] == kinds["torch"]
    record["adaptive_vs_stock"] = float((outs["triton"] - stock).abs().max()) / scale
    if name == "wan":
        out, handle = with_config(module, SparseAttentionConfig(**TINY), offload=True)
        record["cpu_offload_finite"] = bool(torch.isfinite(out).all())
        record["cpu_offload_sparse_calls"] = handle.stats().sparse_calls
    print(json.dumps(record), flush=True)
    return record


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_families_gpu needs a CUDA GPU")
    sys.path.insert(0, str(ROOT / "tests"))
    records = []
    for name in args.families.split(","):
        try:
            records.append(check(name))
        except Exception as e:  # one family failing must not hide the others' results
            records.append(dict(family=name, error=f"{type(e).__name__}: {e}"))
            print(f"{name}: {type(e).__name__}: {e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/check_families_gpu.py " + " ".join(sys.argv[1:])
    device = torch.cuda.get_device_name()
    (out / "families_gpu.json").write_text(json.dumps(dict(device=device, command=command, records=records), indent=1))
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
    (out / "families_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
