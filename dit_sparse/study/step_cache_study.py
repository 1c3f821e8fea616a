"""Sparse attention with diffusers' step caches on the bundled demo model (issue 21): PSNR/SSIM
against dense of each cache alone, each sparse preset alone and each combination, with the steps
each cache served from its cache; whether a combination loses more than its parts; the default
combination; and the skip schedules that `scripts/bench_step_cache.py` composes its totals from.

Runs `dit_sparse.compare.compare` with every cache (dense is generated once per prompt and seed),
in `--workers` processes over the seeds, then writes quality_step_cache.json / .md and
step_cache_schedules.json into --out, beside the compare folder quality_step_cache_runs.

    python scripts/quality_step_cache.py --out docs/results --seeds 0,1,2,3,4,5 --workers 6

Parts and combination: independent errors add in mean squared error, so the error the two parts
make together is 10^(-PSNR_sparse/10) + 10^(-PSNR_cache/10) (frames in [0, 1]); the combination
interacts destructively where its PSNR falls more than 0.5 dB below the PSNR of that sum
(per clip, then the mean over clips).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from diffusers.hooks import FirstBlockCacheConfig

from dit_sparse import SparseAttentionConfig, mag_ratios, quality
from dit_sparse.compare import _fmt, compare
from dit_sparse.demo import STUDY_PROMPTS
from dit_sparse.media import video_suffix
from dit_sparse.step_cache import CACHE_NAMES

from .quality_study import parse_study_args, study_parser, study_pipeline, study_report, write_results

PRESETS = ("balanced", "fast")
# diffusers' default threshold (0.05) served no step of the demo model in 20 steps: the first
# block's residual changes by more than that between steps
FIRST_BLOCK_THRESHOLD = 0.2
TARGET_PSNR = 30.0  # the combination users get, against dense
TARGET_INTERACTION_DB = 0.5


CACHES = tuple(name for name in CACHE_NAMES if name != "none")  # the caches dit_sparse names


def caches(labels=CACHES, first_block_threshold: float = FIRST_BLOCK_THRESHOLD) -> dict:
    """Label -> what `apply(cache=...)` takes, at the settings studied (MagCache: the demo model's
    bundled ratios; TaylorSeer: diffusers' defaults in lite mode)."""
    every = {"first-block": FirstBlockCacheConfig(threshold=first_block_threshold), "mag": "mag", "taylorseer": "taylorseer"}
    return {label: every[label] for label in labels}


def cache_settings(first_block_threshold: float = FIRST_BLOCK_THRESHOLD) -> dict:
    """Label -> the fields of the diffusers config that the benchmark's real loops rebuild."""
    ratios = mag_ratios.load(mag_ratios.DEMO_RATIOS)
    return {"first-block": dict(threshold=first_block_threshold),
            "mag": dict(mag_ratios=ratios, num_inference_steps=len(ratios)), "taylorseer": {}}


def first_block_threshold(report: dict) -> float:
    """The threshold a compare report ran FirstBlockCache at (reports before the option: the default)."""
    return report["meta"].get("first_block_threshold", FIRST_BLOCK_THRESHOLD)


def configs(**fixed) -> dict[str, SparseAttentionConfig]:
    return {p: SparseAttentionConfig.preset(p, **fixed) for p in PRESETS}


def run_compare(args, seeds: list[int], folder: Path, command: str) -> dict:
    """Dense, the presets alone, each cache alone and each combination, in this process."""
    pipe, spec, request, meta = study_pipeline(args)
    fixed = dict(cache_in_warmup=args.cache_in_warmup, **({"block_size": args.block_size} if args.block_size else {}))
    labels = args.caches.split(",")
    shown = [name for name in ("balanced", "dense+mag", "balanced+mag", "fast+taylorseer")
             if "+" not in name or name.partition("+")[2] in labels]
    return compare(pipe, spec, prompts=list(STUDY_PROMPTS[: args.prompts]), seeds=seeds, configs=configs(**fixed), request=request,
                   out_dir=folder, shown=shown, video_suffix=video_suffix()[0],
                   meta=dict(meta, command=command, first_block_threshold=args.first_block_threshold),
                   caches=caches(labels, args.first_block_threshold), sparse_alone=True)


def mse(psnr: float) -> float:
    """Mean squared error of frames in [0, 1] at this PSNR (0 for identical frames)."""
    return 0.0 if np.isinf(psnr) else 10.0 ** (-psnr / 10.0)


def parts_psnr(sparse: float, cache: float) -> float:
    """The PSNR of the two parts' errors added (independent errors add in mean squared error)."""
    total = mse(sparse) + mse(cache)
    return float("inf") if total == 0 else -10.0 * np.log10(total)


def most_common(schedules: list[list[int] | None], steps: int) -> tuple[list[bool], int]:
    """The skip schedule (bool per step) most clips share, and how many share it."""
    counted = Counter(tuple(s) for s in schedules if s is not None)
    if not counted:
        return [False] * steps, 0
    skipped, n = counted.most_common(1)[0]
    return [i in skipped for i in range(steps)], n


def _mean_of(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(report: dict) -> dict:
    """Rows per variant, the interaction of each combination, the default and the schedules."""
    steps = report["meta"]["request"]["steps"]
    runs = [r for r in report["runs"] if r["preset"] != "dense"]
    psnr = {(r["preset"], r["prompt_index"], r["seed"]): quality.from_json(r["psnr"]) for r in runs}
    clips = sorted({(p, s) for _, p, s in psnr})
    rows = {}
    for name in report["meta"]["presets"][1:]:
        preset, _, cache = name.partition("+")
        mine = [r for r in runs if r["preset"] == name]
        values = [quality.from_json(r["psnr"]) for r in mine]
        finite = [v for v in values if np.isfinite(v)]
        skipped = float(np.mean([r["skipped_steps"] or 0 for r in mine]))
        rows[name] = dict(
            preset=preset, cache=cache or "none", clips=len(mine),
            group="cache alone" if preset == "dense" else "combination" if cache else "sparse alone",
            psnr=float(np.mean(finite)) if finite else "inf", identical=len(values) - len(finite),
            min_psnr=quality.finite_or_inf(min(values)),
            ssim=float(np.mean([r["ssim"] for r in mine])),
            mean_density=None if preset == "dense" else _mean_of([r["mean_density"] for r in mine]),
            skipped_steps=skipped, computed_fraction=1.0 - skipped / steps,
            skipped_calls=float(np.mean([r.get("skipped_call_fraction") or 0.0 for r in mine])),
        )
    interactions = {}
    for name, row in rows.items():
        if row["group"] != "combination":
            continue
        sparse, alone = row["preset"], f"dense+{row['cache']}"
        diffs = [parts_psnr(psnr[sparse, *c], psnr[alone, *c]) - psnr[name, *c] for c in clips]
        paired = quality.paired_differences(diffs)
        interactions[name] = dict(
            parts_psnr=quality.finite_or_inf(float(np.mean([parts_psnr(psnr[sparse, *c], psnr[alone, *c]) for c in clips]))),
            excess_loss=paired, met=bool(paired["mean"] <= TARGET_INTERACTION_DB))
    eligible = [n for n, i in interactions.items() if i["met"] and quality.from_json(rows[n]["psnr"]) >= TARGET_PSNR]
    default = max(eligible, key=lambda n: (rows[n]["skipped_steps"], quality.from_json(rows[n]["psnr"])), default=None)
    return dict(rows=rows, interactions=interactions, default=default, schedules=schedules(report, steps))


def schedules(report: dict, steps: int) -> dict:
    """Per cache: the steps it served alone and with each preset (the schedule most clips share,
    keyed by the preset's dense_steps) and its setting: what bench_step_cache composes from."""
    settings, out = cache_settings(first_block_threshold(report)), {}
    for label in report["meta"]["caches"]:
        alone, n_alone = most_common([r["skipped"] for r in report["runs"] if r["preset"] == f"dense+{label}"], steps)
        by_dense_steps, shares = {}, {}
        for preset in PRESETS:
            rows = [r["skipped"] for r in report["runs"] if r["preset"] == f"{preset}+{label}"]
            key = str(report["configs"][f"{preset}+{label}"]["dense_steps"])
            by_dense_steps[key], n = most_common(rows, steps)
            shares[key] = f"{n} of {len(rows)} clips"
        n_clips = sum(r["preset"] == f"dense+{label}" for r in report["runs"])
        out[label] = dict(alone=alone, by_dense_steps=by_dense_steps, config=settings.get(label, {}),
                          source=f"the bundled demo model, {steps} steps, quality_step_cache.md: the schedule most clips "
                                 f"share (alone {n_alone} of {n_clips} clips; with sparse attention, by dense_steps: {shares})")
    return out


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# Step caches with sparse attention on the bundled demo model", "",
        f"Command: `{m['command']}` on {m['device']} ({m['dtype']}); {len(m['prompts'])} prompts x {len(m['seeds'])} "
        f"seeds = {len(m['prompts']) * len(m['seeds'])} clips per variant; {m['num_frames']} frames at "
        f"{m['height']}x{m['width']}, {m['steps']} steps, guidance {m['guidance_scale']}. Every variant starts from the "
        "same prompt and seed as dense; PSNR and SSIM per frame against dense, averaged over frames and clips (PSNR over "
        "the clips that differ from dense; identical clips are counted apart). A step counts as served from the cache "
        "when none of its transformer calls (cond, uncond) ran the last block; calls from the cache: the share of all "
        "transformer calls. "
        + ("The combinations let the cache serve inside the dense warm-up (cache_in_warmup=True). "
           if m.get("cache_in_warmup") else "")
        + "Caches: FirstBlockCache "
        f"at threshold {m['first_block_threshold']} (diffusers' default 0.05 serves no step here), MagCache with the "
        "demo model's bundled ratios and diffusers' other defaults, TaylorSeer in lite mode at diffusers' defaults"
        + ("" if m.get("cache_in_warmup") else ". With sparse attention, no cache serves our dense warm-up steps")
        + ".", "",
        "| variant | group | mean density | steps from the cache | calls from the cache | PSNR dB | identical clips | "
        "min PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        density = "1 (dense)" if r["group"] == "cache alone" else _fmt(r["mean_density"], 3)
        lines.append(f"| {name} | {r['group']} | {density} | {r['skipped_steps']:.1f} of {m['steps']} | "
                     f"{r['skipped_calls']:.0%} | {_fmt(r['psnr'])} | {r['identical']} | {_fmt(r['min_psnr'])} | "
                     f"{r['ssim']:.4f} |")
    lines += [
        "", "## Parts against the combination", "",
        "Parts' PSNR: the two parts' errors added (mean squared error of the sparse preset alone plus that of the "
        "cache alone, per clip). Excess loss: parts' PSNR minus the combination's PSNR, per clip; the mean over "
        f"clips must stay <= {TARGET_INTERACTION_DB} dB (no destructive interaction).", "",
        "| combination | PSNR dB | parts' PSNR dB | excess loss dB (mean ± s.e.) | median | clips worse by > 3 dB | "
        "better by > 3 dB | no destructive interaction | PSNR >= 30 dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, i in result["interactions"].items():
        e, psnr = i["excess_loss"], quality.from_json(result["rows"][name]["psnr"])
        lines.append(f"| {name} | {_fmt(result['rows'][name]['psnr'])} | {_fmt(i['parts_psnr'])} | {e['mean']:.2f} ± "
                     f"{e['sem']:.2f} | {e['median']:.2f} | {e['worse_by_3db']} | {e['better_by_3db']} | "
                     f"{'yes' if i['met'] else 'NO'} | {'yes' if psnr >= TARGET_PSNR else 'no'} |")
    default = result["default"]
    lines += ["", f"Default combination (most steps from the cache among the combinations with PSNR >= {TARGET_PSNR} dB "
              f"and no destructive interaction): **{default or 'none qualifies'}**.", "",
              "Skip schedules for `scripts/bench_step_cache.py`: `step_cache_schedules.json`."]
    return "\n".join(lines) + "\n"


def parser():
    """The study's options: those of every study, the caches and their setting, and --cache-in-warmup."""
    ap = study_parser(__doc__, runs="quality_step_cache_runs")
    ap.add_argument("--caches", default=",".join(CACHES), type=_labels,
                    help=f"comma-separated caches to study (default: all of {', '.join(CACHES)})")
    ap.add_argument("--first-block-threshold", type=float, default=FIRST_BLOCK_THRESHOLD,
                    help="FirstBlockCache's threshold (default %(default)s)")
    ap.add_argument("--cache-in-warmup", action="store_true",
                    help="the combinations let the cache serve inside the dense warm-up (cache_in_warmup=True)")
    return ap


def _labels(text: str) -> str:
    unknown = [label for label in text.split(",") if label not in CACHES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown caches {unknown}: choose from {', '.join(CACHES)}")
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_study_args(parser(), argv)
    command = "python scripts/quality_step_cache.py " + " ".join(argv)
    made = study_report(args, argv, command, __name__, args.out / "quality_step_cache_runs", run_compare)
    if made is None:
        return
    report, seeds, processes, command = made
    meta = report["meta"]
    result = dict(
        meta=dict(command=command, device=meta["device"], dtype=meta["dtype"], processes=processes, prompts=meta["prompts"],
                  seeds=seeds, torch=meta["torch"], first_block_threshold=first_block_threshold(report),
                  cache_in_warmup=any((c or {}).get("cache_in_warmup", False) for c in report["configs"].values()),
                  **{k: meta["request"][k] for k in ("steps", "num_frames", "height", "width", "guidance_scale")}),
        **summarise(report),
    )
    write_results(args.out, "quality_step_cache", result, markdown(result))
    (args.out / "step_cache_schedules.json").write_text(json.dumps(result["schedules"], indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
