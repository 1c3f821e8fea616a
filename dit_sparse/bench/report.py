"""The end-to-end benchmark's results file (records merged across runs) and its Markdown, and
the multi-GPU benchmark's Markdown."""

from __future__ import annotations

import json
from pathlib import Path

from .specs import SPARSE_CONFIGS, SPECS, STEPS
from .trace import TRACE_CATEGORIES


def record_id(r: dict) -> tuple:
    return r["model"], r["height"], r["width"], r["num_frames"], r["config"], r.get("baseline", "eager")


def merge_e2e(path: Path, records: list[dict], errors: list[dict], command: str) -> dict:
    """Add this run's records to the file's: records of the same model, resolution and config
    are replaced; errors of the models run now are dropped."""
    data = json.loads(path.read_text()) if path.exists() else {}
    new_ids = {record_id(r) for r in records}
    runs = {(x["key"], x.get("baseline", "eager")) for x in [*records, *errors]}
    data["records"] = [r for r in data.get("records", []) if record_id(r) not in new_ids] + records
    data["errors"] = [e for e in data.get("errors", []) if (e["key"], e.get("baseline", "eager")) not in runs] + errors
    data["commands"] = [c for c in data.get("commands", []) if c != command] + [command]
    order = {k: i for i, k in enumerate(SPECS)}
    configs = ("dense", *SPARSE_CONFIGS)
    data["records"].sort(key=lambda r: (order.get(r["key"], len(order)), r.get("baseline", "eager") != "eager",
                                        configs.index(r["config"])))
    path.write_text(json.dumps(data, indent=1))
    return data


def e2e_markdown(data: dict) -> str:
    records = data["records"]
    devices = sorted({r["device"] for r in records})
    tiny = any(r["tiny"] for r in records)
    lines = [
        f"# End-to-end speed per denoising step ({', '.join(devices) or 'no records'})", "",
        *(["`--tiny`: scaled-down models, resolutions and blocks on the CPU in float32, a check of the code "
           "path; its times mean nothing.", ""] if tiny else []),
        "Full-size transformers from the checkpoints' configs (dit_sparse/assets/transformer_configs), random "
        "weights in bf16, "
        "called as their pipelines do (Wan: cond + uncond calls; CogVideoX: batch 2; HunyuanVideo, Flux: one call). "
        "Dense = stock processors under `sdpa_kernel([cuDNN, ...], set_priority=True)` (backend column: what it picks "
        "for the self-attention). profile = first sparse step (every sparse layer profiles), cached = a step under "
        "cached plans, warm-up = a dense step through our processors (the stock call, except HunyuanVideo: "
        "unmasked over the valid tokens, see text_mask_h100.md); 50-step totals composed as "
        "n_dense x warm-up + n_profile x profile + n_cached x cached. "
        "Fixed-density mode; svg = Sparse VideoGen's dense fractions and density, profiling every sparse step "
        "(Flux: Wan's settings); balanced / fast = our presets at svg's density. attn = self-attention share of a "
        "dense step. Measured = a real 50-step loop (must agree with the composition within 3%). "
        "vs our dense = the speed-up over 50 warm-up steps, which leaves out what our processors gain on dense "
        "steps (HunyuanVideo's unmasked valid tokens, Wan's one-pass RoPE).", "",
        "Baseline: eager = the transformer as it is; compiled = its blocks compiled as diffusers documents "
        "(`compile_repeated_blocks(fullgraph=True)`, Inductor), dense and sparse alike, so a compiled row's speed-up "
        "is over compiled stock dense.", "",
        "| model | H x W x F | tokens | baseline | config | dense steps / layers / refresh | dense s/step | "
        "warm-up s/step | profile s/step | cached s/step | attn | density | 50 steps dense s | 50 steps sparse s | "
        "speed-up | vs our dense | measured 50 steps s | SDPA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        refresh = "-" if r["refresh_every"] is None else r["refresh_every"]
        measured = f"{r['measured_total_s']:.1f} ({r['measured_vs_composed']:+.1%})" if "measured_total_s" in r else ""
        vs_ours = f"{r['speedup_vs_warmup']:.2f}x" if "speedup_vs_warmup" in r else "-"
        lines.append(
            f"| {r['model']} | {r['height']}x{r['width']}x{r['num_frames']} | {r['tokens']} | "
            f"{r.get('baseline', 'eager')} | {r['config']} | "
            f"{r['dense_steps']} / {r['dense_layers']} / {refresh} | {r['dense_s_per_step']:.3f} | "
            f"{r.get('warmup_s_per_step', r['dense_s_per_step']):.3f} | {r['profile_s_per_step']:.3f} | {r['sparse_s_per_step']:.3f} | {r['attention_share']:.0%} | "
            f"{r['mean_density']:.3f} | {r['total_dense_s']:.1f} | {r['total_sparse_s']:.1f} | {r['speedup']:.2f}x | "
            f"{vs_ours} | {measured} | {r['dense_sdpa_backend']} |"
        )
    lines += ["", "## Targets (50 steps with SVG's dense fractions, density <= 0.3, over dense of the same baseline: "
                  "the svg column)", "",
              "| entry | baseline | target | svg | balanced | fast | Sparse VideoGen reported (their H100 run) |",
              "|---|---|---|---|---|---|---|"]
    by_key = {}
    for r in records:
        by_key.setdefault((r["key"], r.get("baseline", "eager")), {})[r["config"]] = r
    for key, baseline in sorted(by_key, key=lambda kb: (list(SPECS).index(kb[0]) if kb[0] in SPECS else len(SPECS),
                                                          kb[1] != "eager")):
        got = by_key[(key, baseline)]
        target = SPECS[key].compiled_target if baseline == "compiled" else SPECS[key].target
        cells = []
        for name in SPARSE_CONFIGS:
            r = got.get(name)
            if r is None:
                cells.append("")
                continue
            mark = "" if target is None or name != "svg" else (" (met)" if r["speedup"] >= target else " (missed)")
            cells.append(f"{r['speedup']:.2f}x{mark}")
        goal = "" if target is None else f">= {target}x"
        lines.append(f"| {key} | {baseline} | {goal} | {' | '.join(cells)} | {SPECS[key].svg_reported} |")
    merged = sorted({(r["key"], r["distinct_timesteps"]) for r in records if r["distinct_timesteps"] < r["steps"]})
    if merged:
        lines += ["", "Timesteps that coincide once the pipeline casts them (the runtime then sees fewer steps on a "
                      "bare transformer): " + ", ".join(f"{k}: {n} distinct of {STEPS}" for k, n in merged) + "."]
    compared = [r for r in records if r.get("compiled_vs_eager")]
    if compared:
        lines += ["", "## Compiled against eager, the same config (bf16)", "",
                  "The step's first call compiled and with compiled code bypassed "
                  "(`torch.compiler.set_stance(\"force_eager\")`, the same modules and weights); for a sparse "
                  "config, a profiling call then a cached call, each run profiling its own plans. Stock dense is the "
                  "reference: Inductor's fused kernels round bf16 differently from eager's op-by-op code. A sparse "
                  "config is equal when its difference is at most the tolerance: 1.1 x stock dense's, or 2^-7.", "",
                  "| model | H x W x F | config | relative L2 | max abs error | max abs value | cosine | tolerance | "
                  "equal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in compared:
            c = r["compiled_vs_eager"]
            tolerance = "reference" if c.get("tolerance") is None else f"{c['tolerance']:.2e}"
            equal = "-" if c.get("equal") is None else "yes" if c["equal"] else "NO"
            lines.append(f"| {r['model']} | {r['height']}x{r['width']}x{r['num_frames']} | {r['config']} | "
                         f"{c['rel_l2']:.2e} | {c['max_abs']:.3g} | {c['expected_max_abs']:.3g} | {c['cosine']:.6f} | "
                         f"{tolerance} | {equal} |")
    traced = [r for r in records if r.get("trace")]
    if traced:
        lines += ["", "## Where a cached svg step's time goes (torch.profiler, kernel time per category)", "",
                  "Host gap = wall minus GPU busy: launch latency and host work, the most that CUDA graphs could "
                  "remove.", "",
                  "| model | baseline | wall s | GPU busy s | host gap | " + " | ".join(c for c, _ in TRACE_CATEGORIES)
                  + " | other |",
                  "|---|---|---|---|---|" + "---|" * (len(TRACE_CATEGORIES) + 1)]
        for r in traced:
            t = r["trace"]
            cells = [f"{t['categories_s'].get(c, 0.0):.3f}" for c, _ in TRACE_CATEGORIES] + [f"{t['categories_s'].get('other', 0.0):.3f}"]
            gap = 1 - t["gpu_busy_s"] / t["wall_s"]
            lines.append(f"| {r['model']} {r['height']}x{r['width']} | {r.get('baseline', 'eager')} | {t['wall_s']:.3f} | "
                         f"{t['gpu_busy_s']:.3f} | {gap:.1%} | {' | '.join(cells)} |")
    if data.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e['key']}: {e['error']}" for e in data["errors"]]
    lines += ["", "## Commands", ""] + [f"- `{c}`" for c in data["commands"]]
    return "\n".join(lines) + "\n"


def multigpu_markdown(record: dict) -> str:
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


def step_cache_markdown(data: dict) -> str:
    """The sparse + step cache benchmark's table (dit_sparse/bench/step_cache.py) and its targets."""
    records = data["records"]
    tiny = any(r["tiny"] for r in records)
    lines = [
        f"# Sparse attention with step caches, end to end ({', '.join(sorted({r['device'] for r in records}))})", "",
        *(["`--tiny`: scaled-down models on the CPU, a check of the code path; its times mean nothing.", ""]
          if tiny else []),
        "Full-size transformers, random weights in bf16, called as their pipelines call them (each call inside "
        "`cache_context`). A cache's decisions on random weights mean nothing, so each cache is timed with its "
        "decisions forced, under the balanced preset: a computed step (its bookkeeping included) and a skipped step. "
        "What the cache adds to a computed step and what a skipped step costs do not depend on the attention, so "
        "they carry over to dense and fast. 50-step totals follow the skip schedule named in the source column (the "
        "steps the cache skipped on the bundled demo model at the chosen setting, beside the preset of the same dense "
        "warm-up, resampled from 20 to 50 steps); "
        + ("the cache also serves steps inside our dense warm-up (cache_in_warmup). "
           if any(r.get("cache_in_warmup") for r in records) else "our dense warm-up steps are never skipped. ")
        + "Speed-ups are over 50 "
        "stock dense steps of the same baseline. Measured = a real 50-step loop at the chosen setting, against the "
        "total composed from the steps that loop skipped (must agree within 3%). Demo PSNR: the same preset and "
        "cache on the bundled demo model against dense (quality_step_cache.md).", "",
        "| model | H x W x F | baseline | config | cache | dense s/step | computed s/step | skipped s/step | "
        "skipped steps | 50 steps s | speed-up | demo PSNR dB | measured 50 steps s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        computed = r.get("computed_s_per_step", r.get("cached_s_per_step"))
        measured = (f"{r['measured_total_s']:.1f} ({r['measured_vs_composed']:+.1%} of {r['loop_composed_s']:.1f})"
                    if "measured_total_s" in r else "")
        skipped = f"{r['skipped_s_per_step']:.3f}" if "skipped_s_per_step" in r else "-"
        psnr = r.get("demo_psnr")
        lines.append(
            f"| {r['model']} | {r['height']}x{r['width']}x{r['num_frames']} | {r['baseline']} | {r['config']} | "
            f"{r['cache']} | {r['dense_s_per_step']:.3f} | {'-' if computed is None else f'{computed:.3f}'} | {skipped} | "
            f"{r.get('n_skipped_steps', 0)} | {r['total_s']:.1f} | {r['speedup']:.2f}x | "
            f"{'-' if psnr is None else psnr if psnr == 'inf' else f'{psnr:.2f}'} | {measured} |")
    sources = {r["cache"]: r["schedule_source"] for r in records if r.get("schedule_source")}
    if sources:
        lines += ["", "Skip schedules:"] + [f"- {cache}: {source}" for cache, source in sources.items()]
    if data.get("note"):
        lines += ["", data["note"]]
    targets, floor = data.get("targets", {}), data.get("target_psnr")
    rows = [r for r in records if r["key"] in targets and r["baseline"] == "eager" and r["config"] != "dense"
            and r["cache"] != "none"]
    if rows and floor is not None:
        lines += ["", f"## Targets (eager, 50 steps, the fastest preset + cache whose demo PSNR is >= {floor} dB)", "",
                  "| model | target | best qualifying combination | speed-up | met |", "|---|---|---|---|---|"]
        for key in dict.fromkeys(r["key"] for r in rows):
            ok = [r for r in rows if r["key"] == key and r.get("demo_psnr") is not None
                  and (r["demo_psnr"] == "inf" or r["demo_psnr"] >= floor)]
            best = max(ok, key=lambda r: r["speedup"], default=None)
            lines.append(f"| {key} | >= {targets[key]}x | "
                         + (f"{best['config']}+{best['cache']} | {best['speedup']:.2f}x | "
                            f"{'yes' if best['speedup'] >= targets[key] else 'NO'} |" if best else "none | - | NO |"))
    lines += ["", f"Command: `{data['command']}`"]
    return "\n".join(lines) + "\n"
