"""Dense against sparse presets from the same prompts and seeds: speed, PSNR/SSIM (LPIPS when
available), side-by-side videos and plots, written as report.json / report.md in one folder."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import quality, report_plots
from .api import apply
from .config import PRESETS, SparseAttentionConfig
from .generation import GenerationError, GenerationRequest, PipelineSpec, generate
from .media import save_frames, side_by_side

PRESET_NAMES = ("dense", *PRESETS)


def preset_config(name: str, overrides: dict | None = None) -> SparseAttentionConfig | None:
    """The config of a preset name ("dense" = None: the model's own attention)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if name == "dense":
        if overrides:
            raise GenerationError(f"--preset dense runs the model's own attention; the overrides {sorted(overrides)} "
                                  "need a sparse preset (quality, balanced, fast).")
        return None
    if name not in PRESETS:
        raise GenerationError(f"--preset {name!r} is unknown: choose one of {', '.join(PRESET_NAMES)}.")
    try:
        return SparseAttentionConfig.preset(name, **overrides)
    except ValueError as e:
        raise GenerationError(f"Invalid sparse attention setting: {e}.") from None


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _psnr_mean(values):
    return quality.finite_or_inf(float(np.mean(values)))


def compare(pipe, spec: PipelineSpec, *, prompts: list[str], seeds: list[int],
            configs: dict[str, SparseAttentionConfig], request: GenerationRequest, out_dir: Path, fps: int = 16,
            warmup: bool = True, shown: list[str] | None = None, video_suffix: str = ".mp4", log=print,
            meta: dict | None = None, caches: dict | None = None, sparse_alone: bool = False) -> dict:
    """Generate dense and every named config for each prompt and seed; write the report folder
    (side-by-side videos, `video_suffix` .mp4 or .gif, show dense and the configs in `shown`,
    default all). With step `caches` (label -> what `apply(cache=...)` takes), the reference
    stays dense without a cache; per cache the row "dense+<label>" is the cache alone and every
    config runs with it ("<config>+<label>"); the configs run alone too where `sparse_alone`."""
    configs = {name: cfg for name, cfg in configs.items() if name != "dense"}
    caches = caches or {}
    rows = {name: (cfg, None) for name, cfg in configs.items()} if sparse_alone or not caches else {}
    for label in caches:  # row name -> (sparse config or None, cache label or None)
        rows[f"dense+{label}"] = (None, label)
        rows.update({f"{name}+{label}": (cfg, label) for name, cfg in configs.items()})
    shown = list(rows) if shown is None else [n for n in rows if n in shown or n.split("+")[0] in shown]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = apply(pipe, next(iter(configs.values()), None)) if rows else None
    lpips = quality.LPIPS("cuda" if torch.cuda.is_available() else "cpu")
    cache_on = None  # the label of the cache enabled now

    def run(name, req):
        nonlocal cache_on
        config, label = rows.get(name, (None, None))
        if handle is not None:
            if label != cache_on:
                handle.set_cache(caches[label] if label is not None else "none")
                cache_on = label
            handle.enabled = config is not None
            if config is not None and handle.config != config:
                handle.set_config(config)
        return generate(pipe, spec, req, handle if config is not None else None)

    if warmup:  # first calls pay for CUDA set-up and kernel compilation; keep that out of the timings
        short = replace(request, prompt=prompts[0], seed=seeds[0], steps=min(2, request.steps or 2))
        for name in ["dense", *rows]:
            run(name, short)

    runs, stats_by_preset, videos = [], {}, []
    for p, prompt in enumerate(prompts):
        for s, seed in enumerate(seeds):
            req = replace(request, prompt=prompt, seed=seed)
            log(f"[{p + 1}/{len(prompts)}] seed {seed}: dense")
            dense = run("dense", req)
            runs.append(_record("dense", p, prompt, seed, dense, dense.frames, lpips))
            videos_shown = [("dense", dense.frames)]
            for name in rows:
                log(f"[{p + 1}/{len(prompts)}] seed {seed}: {name}")
                result = run(name, req)
                runs.append(_record(name, p, prompt, seed, result, dense.frames, lpips))
                stats_by_preset.setdefault(name, result.stats)
                if name in shown:
                    videos_shown.append((name, result.frames))
            if s == 0:
                suffix = video_suffix if spec.video else ".png"
                path = out_dir / f"side_by_side_prompt{p}{suffix}"
                save_frames(side_by_side(videos_shown), path, fps=fps)
                videos.append(path.name)

    if handle is not None and cache_on is not None:
        handle.set_cache("none")  # the pipeline as it came
    summary = _summarise(runs, ["dense", *rows])
    plots = _plots(stats_by_preset, summary, out_dir)
    report = dict(
        meta=dict(meta or {}, prompts=prompts, seeds=seeds, presets=["dense", *rows], request=asdict(request),
                  caches=list(caches),
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
                  torch=torch.__version__),
        lpips=dict(available=lpips.available, reason=lpips.reason),
        configs={name: asdict(cfg) for name, (cfg, _) in rows.items() if cfg is not None},
        summary=summary, runs=runs, stats=stats_by_preset, files=dict(videos=videos, plots=plots),
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(markdown(report))
    return report


def merge_reports(reports: list[dict], out_dir: Path, meta: dict | None = None) -> dict:
    """One report from reports of the same prompts and configs over different seeds (shards of
    one comparison run side by side); the first report's folder holds the videos and per-layer
    statistics. Summary and plots are recomputed over all runs; `meta` updates the first
    report's; writes report.json / .md."""
    first = reports[0]
    for other in reports[1:]:
        if other["configs"] != first["configs"] or other["meta"]["prompts"] != first["meta"]["prompts"]:
            raise ValueError("reports to merge must share their prompts and configs")
    seeds = [seed for r in reports for seed in r["meta"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"reports to merge must cover different seeds, got {seeds}")
    # stable sort: each report lists a prompt's seeds in order and, within one seed, the presets in order
    runs = sorted((run for r in reports for run in r["runs"]), key=lambda run: (run["prompt_index"], seeds.index(run["seed"])))
    summary = _summarise(runs, first["meta"]["presets"])
    out_dir = Path(out_dir)
    plots = _plots(first["stats"], summary, out_dir)
    report = dict(first, meta=dict(first["meta"], **(meta or {}), seeds=seeds), summary=summary, runs=runs,
                  files=dict(videos=first["files"]["videos"], plots=plots))
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(markdown(report))
    return report


def _record(name, p, prompt, seed, result, reference, lpips) -> dict:
    value = quality.psnr(result.frames, reference)
    return dict(
        preset=name, prompt_index=p, prompt=prompt, seed=seed, wall_s=result.wall_s,
        transformer_s_per_step=result.transformer_s_per_step, steps=result.steps,
        mean_density=(result.stats or {}).get("mean_density") if name != "dense" else 1.0,
        skipped_steps=None if result.skipped_steps is None else len(result.skipped_steps), skipped=result.skipped_steps,
        skipped_call_fraction=result.skipped_call_fraction,
        psnr=quality.finite_or_inf(value), ssim=quality.ssim(result.frames, reference),
        lpips=lpips(result.frames, reference) if lpips.available else None,
    )


def _summarise(runs: list[dict], presets: list[str]) -> dict:
    dense_wall = _mean(r["wall_s"] for r in runs if r["preset"] == "dense")
    dense_step = _mean(r["transformer_s_per_step"] for r in runs if r["preset"] == "dense")
    summary = {}
    for name in presets:
        rows = [r for r in runs if r["preset"] == name]
        wall = _mean(r["wall_s"] for r in rows)
        step = _mean(r["transformer_s_per_step"] for r in rows)
        summary[name] = dict(
            runs=len(rows), wall_s=wall, transformer_s_per_step=step,
            speedup=dense_wall / wall, transformer_speedup=dense_step / step if step else None,
            mean_density=_mean(r["mean_density"] for r in rows),
            skipped_steps=_mean(r.get("skipped_steps") for r in rows),
            psnr=_psnr_mean([quality.from_json(r["psnr"]) for r in rows]),
            ssim=_mean(r["ssim"] for r in rows), lpips=_mean(r["lpips"] for r in rows),
        )
    return summary


def _plots(stats_by_preset: dict, summary: dict, out_dir: Path) -> list[str]:
    names = []
    for preset, stats in stats_by_preset.items():
        if stats and stats["layers"]:
            names.append(report_plots.plot_head_kinds(stats, out_dir / f"head_kinds_{preset}.png",
                                                      f"head kinds, preset {preset} (batch item 0)").name)
    usable = {p: s for p, s in stats_by_preset.items() if s}
    if usable:
        names.append(report_plots.plot_density_per_layer(usable, out_dir / "density_per_layer.png").name)
    if len(summary) > 1:
        names.append(report_plots.plot_speed_vs_psnr(summary, out_dir / "speedup_vs_psnr.png").name)
    return names


def _fmt(value, digits=2):
    if value is None:
        return "n/a"
    if value == "inf":
        return "inf"
    return f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    meta, summary = report["meta"], report["summary"]
    req = meta["request"]
    size = f"{req.get('num_frames') or 1} x {req.get('height')} x {req.get('width')}"
    lines = [
        "# dense against sparse presets", "",
        f"Model: `{meta.get('model', '?')}` ({meta.get('pipeline', '?')}); device: {meta['device']}, "
        f"dtype {meta.get('dtype', '?')}; frames x height x width: {size}; steps: {req.get('steps')}; "
        f"guidance: {req.get('guidance_scale')}.",
        f"{len(meta['prompts'])} prompts x {len(meta['seeds'])} seeds ({', '.join(map(str, meta['seeds']))}); "
        f"every preset starts from the same seed and prompt as dense.",
    ]
    if meta.get("command"):
        lines.append(f"Command: `{meta['command']}`")
    lpips_note = "" if report["lpips"]["available"] else f" LPIPS: unavailable ({report['lpips']['reason']})."
    lines += [
        "", "Speed-up = mean dense wall time / mean preset wall time. PSNR and SSIM: per frame against the dense "
        f"video, averaged over frames, then over prompts and seeds.{lpips_note}", "",
        "| preset | wall s | transformer s/step | speed-up | transformer speed-up | mean density | PSNR dB | SSIM | LPIPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {_fmt(row['wall_s'])} | {_fmt(row['transformer_s_per_step'], 3)} | {_fmt(row['speedup'])}x | "
            f"{_fmt(row['transformer_speedup'])}x | {_fmt(row['mean_density'], 3)} | {_fmt(row['psnr'])} | "
            f"{_fmt(row['ssim'], 4)} | {_fmt(row['lpips'], 4)} |"
        )
    if meta.get("caches"):
        skipped = ", ".join(f"{name} {_fmt(row.get('skipped_steps'), 1)}" for name, row in summary.items()
                            if "+" in name)
        lines += ["", f"Step caches: {', '.join(meta['caches'])} (a \"dense+<cache>\" row is the cache alone). Steps "
                  f"the cache served from its cache, per generation (of {req.get('steps')}): {skipped} (a step counts "
                  "when none of its transformer calls ran the last block; the cache never skips sparse attention's "
                  "dense warm-up steps)."]
    lines += ["", "## Per prompt and seed", "", "| prompt | seed | preset | wall s | density | PSNR dB | SSIM |",
              "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['prompt_index']}: {r['prompt']} | {r['seed']} | {r['preset']} | {_fmt(r['wall_s'])} | "
                     f"{_fmt(r['mean_density'], 3)} | {_fmt(r['psnr'])} | {_fmt(r['ssim'], 4)} |")
    files = report["files"]
    lines += ["", "## Files", ""]
    lines += [f"- side by side: [{v}]({v})" for v in files["videos"]]
    lines += [f"- plot: ![{p}]({p})" for p in files["plots"]]
    return "\n".join(lines) + "\n"
