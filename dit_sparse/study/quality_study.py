"""Quality study on the bundled demo model: PSNR/SSIM against dense for each preset, each
refresh cadence, each dense warm-up fraction and Sparse VideoGen-style fixed densities.

Runs `dit_sparse.compare.compare` once over all variants (dense is generated once per prompt
and seed), then writes quality_demo.json / .md and the plots PSNR-against-density and the
balanced preset's head-kind map into --out, beside the compare folder (videos, per-run data).

    python scripts/quality_study.py --out docs/results --seeds 0,1,2,3 --steps 20 --workers 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dit_sparse import SparseAttentionConfig  # noqa: E402
from dit_sparse import generation as gen  # noqa: E402
from dit_sparse import quality  # noqa: E402
from dit_sparse.compare import _fmt, compare, merge_reports  # noqa: E402
from dit_sparse.demo import STUDY_PROMPTS  # noqa: E402
from dit_sparse.media import video_suffix  # noqa: E402

TARGET_PSNR = 30.0  # balanced against dense
TARGET_CACHE_LOSS = 0.5  # dB: refresh_every 5 against re-profiling every step


def variants(**fixed) -> dict[str, tuple[str, SparseAttentionConfig]]:
    """name -> (group, config). `fixed` overrides every config (e.g. a smaller block size)."""
    # the sweeps vary one field of this base (the balanced preset as it stood before the study)
    base = SparseAttentionConfig(dense_steps=0.2, dense_layers=1, refresh_every=5, recall=0.95, **fixed)
    out = {p: ("preset", SparseAttentionConfig.preset(p, **fixed)) for p in ("quality", "balanced", "fast")}
    for r in (1, 2, 5, 0):
        out[f"refresh_{r}"] = ("refresh_every", replace(base, refresh_every=r))
    for d in (0, 0.1, 0.2):
        out[f"dense_steps_{d}"] = ("dense_steps", replace(base, dense_steps=float(d)))
    for density in (0.15, 0.25, 0.35):  # Sparse VideoGen: fixed density, re-classify at every step
        out[f"density_{density}"] = ("fixed density", replace(base, density=density, refresh_every=1))
    return out


def paired_loss(report: dict, reference: str, variant: str) -> dict:
    """Per clip (prompt, seed), reference PSNR minus variant PSNR: `quality.paired_differences`."""
    psnr = {(r["prompt_index"], r["seed"], r["preset"]): quality.from_json(r["psnr"]) for r in report["runs"]}
    return quality.paired_differences([psnr[p, s, reference] - psnr[p, s, variant] for p, s, name in psnr if name == reference])


def plot_psnr_vs_density(rows: dict, path: Path):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = sorted({r["group"] for r in rows.values()})
    for group in groups:
        pts = [(r["mean_density"], quality.from_json(r["psnr"]), name) for name, r in rows.items() if r["group"] == group]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=group, s=36)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.axhline(TARGET_PSNR, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("mean density (fraction of blocks computed in sparse calls)")
    ax.set_ylabel("PSNR against dense (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("demo model: quality against density", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# Quality study on the bundled demo model", "",
        f"Command: `{m['command']}` on {m['device']} ({m['dtype']}); {len(m['prompts'])} prompts x "
        f"{len(m['seeds'])} seeds; {m['num_frames']} frames at {m['height']}x{m['width']}, {m['steps']} steps, "
        f"guidance {m['guidance_scale']}. Each variant starts from the same prompt and seed as dense; PSNR and SSIM "
        "are per frame against dense, averaged over frames, prompts and seeds. Speed-ups on this small model "
        "(2304 tokens) say little about real sizes: see e2e_h100.md and e2e_h200.md."
        + (f" The seeds ran in {m['processes']} processes sharing the GPU, so the speed-ups were measured under "
           "contention." if m.get("processes", 1) > 1 else ""), "",
        "| variant | dense_steps | refresh_every | recall | density | mean density | PSNR dB | min PSNR dB | SSIM | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["variants"].items():
        c = r["config"]
        lines.append(
            f"| {name} | {c['dense_steps']} | {c['refresh_every']} | {c['recall']} | {c['density'] or 'adaptive'} | "
            f"{r['mean_density']:.3f} | {_fmt(r['psnr'])} | {_fmt(r['min_psnr'])} | {r['ssim']:.4f} | {r['speedup']:.2f}x |"
        )
    t = result["targets"]
    lines += [
        "", "## Targets", "",
        f"- balanced preset PSNR >= {TARGET_PSNR} dB: {_fmt(t['balanced_psnr'])} dB, "
        f"{'met' if t['balanced_met'] else 'MISSED'}",
        f"- caching (refresh_every 5) loses at most {TARGET_CACHE_LOSS} dB against refresh_every 1: "
        f"{_fmt(t['cache_loss_db'])} dB, {'met' if t['cache_met'] else 'MISSED'}",
        f"  - per clip (refresh_1 minus refresh_5 over {t['cache_paired']['clips']} clips): mean "
        f"{t['cache_paired']['mean']:.2f} ± {t['cache_paired']['sem']:.2f} dB (standard error), median "
        f"{t['cache_paired']['median']:.2f} dB; {t['cache_paired']['worse_by_3db']} clips lost more than 3 dB and "
        f"{t['cache_paired']['better_by_3db']} gained more than 3 dB; the mean over the other clips is "
        f"{t['cache_paired']['mean_without_3db_moves']:.2f} dB",
        "", "Plots: ![PSNR against density](quality_demo_psnr_vs_density.png) "
        "![head kinds, balanced](quality_demo_head_kinds.png)",
    ]
    return "\n".join(lines) + "\n"


def seed_groups(seeds: list[int], workers: int) -> list[list[int]]:
    """The seeds split round-robin over at most `workers` processes."""
    return [group for group in (seeds[i::workers] for i in range(workers)) if group]


def study_pipeline(args, model: str | None = None):
    """The pipeline at `model` (default --model; None: the bundled demo model), quiet, its spec,
    the request every clip of the study shares and the report's meta."""
    device, warning = gen.pick_device(args.device)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    dtype = gen.pick_dtype(args.dtype, device)
    path, _ = gen.resolve_model(model or args.model)
    spec = gen.pipeline_spec(gen.pipeline_class_name(path))
    pipe = gen.load_pipeline(path, dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    request = gen.GenerationRequest(
        prompt="", num_frames=args.num_frames, height=args.height, width=args.width, steps=args.steps,
        guidance_scale=gen.DEMO_DEFAULTS["guidance_scale"], max_sequence_length=gen.DEMO_DEFAULTS["max_sequence_length"],
        negative_prompt="",
    )
    gen.check_request(pipe, spec, request)
    return pipe, spec, request, dict(model=str(path), dtype=str(dtype).replace("torch.", ""))


def run_compare(args, seeds: list[int], folder: Path, command: str) -> dict:
    """Dense and every variant for the study prompts and these seeds, in this process."""
    pipe, spec, request, meta = study_pipeline(args)
    return compare(pipe, spec, prompts=list(STUDY_PROMPTS[: args.prompts]), seeds=seeds,
                   configs={n: c for n, (_, c) in study_variants(args).items()}, request=request, out_dir=folder,
                   shown=["quality", "balanced", "fast"], video_suffix=video_suffix()[0], meta=dict(meta, command=command))


def study_variants(args):
    return variants(**({"block_size": args.block_size} if args.block_size else {}))


def shard_args(argv: list[str]) -> list[str]:
    """The command line's own options, which every worker process repeats: all but --seeds and --workers."""
    shared, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--seeds", "--workers"):
            skip = True
        elif not arg.startswith(("--seeds=", "--workers=")):
            shared.append(arg)
    return shared


def run_shards(module: str, shared: list[str], groups: list[list[int]], folder: Path, command: str) -> dict:
    """One process of `module` (with `shared` options) per seed group on the same device (the
    demo model leaves a GPU mostly idle, so this multiplies throughput), then one report over all
    runs. The first group writes into `folder` (its side-by-side videos are kept); the others
    into shard folders, removed after."""
    folders = [folder] + [folder / f"shard{i}" for i in range(1, len(groups))]
    procs = [
        subprocess.Popen([sys.executable, "-m", module, *shared, "--seeds", ",".join(map(str, group)), "--shard-dir", str(f)])
        for group, f in zip(groups, folders)
    ]
    if failed := [group for group, proc in zip(groups, procs) if proc.wait() != 0]:
        sys.exit(f"the study's processes for seeds {failed} failed (their errors are above)")
    reports = [json.loads((f / "report.json").read_text()) for f in folders]
    report = merge_reports(reports, folder, meta=dict(command=command, processes=len(groups)))
    for f in folders[1:]:
        shutil.rmtree(f)
    return report


def study_parser(description: str, runs: str | None = None) -> argparse.ArgumentParser:
    """The options of a study on the bundled demo model run as seed-sharded compare processes;
    with `runs` (the study's compare folder), --report re-makes its tables from that folder's report."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if runs is not None:
        ap.add_argument("--report", type=Path,
                        help=f"a study's {runs}/report.json: re-make the tables from it, generating nothing")
    ap.add_argument("--model", help="pipeline folder (default: the bundled demo model)")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--prompts", type=int, default=len(STUDY_PROMPTS), help="first N of the study prompts")
    ap.add_argument("--steps", type=int, default=gen.DEMO_DEFAULTS["steps"])
    ap.add_argument("--num-frames", type=int, default=gen.DEMO_DEFAULTS["num_frames"])
    ap.add_argument("--height", type=int, default=gen.DEMO_DEFAULTS["height"])
    ap.add_argument("--width", type=int, default=gen.DEMO_DEFAULTS["width"])
    ap.add_argument("--block-size", type=int, help="override every variant's block size (small CPU runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes sharing the device, each over a share of the seeds (speed-ups are then measured under contention)")
    ap.add_argument("--shard-dir", type=Path, help=argparse.SUPPRESS)  # a worker of --workers: compare only, into this folder
    return ap


def parse_study_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    return args


def write_results(out: Path, stem: str, result: dict, text: str):
    """A study's results as out/stem.json and its report as out/stem.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)


def study_report(args, argv: list[str], command: str, module: str, folder: Path,
                 run_compare) -> tuple[dict, list[int], int, str] | None:
    """The compare report a study summarises, its seeds, how many processes made it and the
    command to cite: re-read from --report, made by --workers processes of `module` (each with
    the command line `argv` but its own seeds), or by `run_compare` here; None in a worker process
    (--shard-dir), which only compares."""
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.shard_dir is not None:
        run_compare(args, seeds, args.shard_dir, command)
        return None
    if args.report:
        report = json.loads(args.report.read_text())
        return (report, report["meta"]["seeds"], report["meta"].get("processes", 1),
                f"{report['meta']['command']}, tables re-made by `{command}`")
    groups = seed_groups(seeds, args.workers)
    if len(groups) > 1:
        return run_shards(module, shard_args(argv), groups, folder, command), seeds, len(groups), command
    return run_compare(args, seeds, folder, command), seeds, 1, command


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_study_args(study_parser(__doc__, runs="quality_demo_runs"), argv)
    command = "python scripts/quality_study.py " + " ".join(argv)
    folder = args.out / "quality_demo_runs"
    made = study_report(args, argv, command, __name__, folder, run_compare)
    if made is None:
        return
    report, seeds, processes, command = made

    named = study_variants(args)
    rows = {}
    for name, (group, config) in named.items():
        s = report["summary"][name]
        runs = [quality.from_json(r["psnr"]) for r in report["runs"] if r["preset"] == name]
        rows[name] = dict(group=group, config=report["configs"][name], mean_density=s["mean_density"],
                          psnr=s["psnr"], min_psnr=quality.finite_or_inf(min(runs)), ssim=s["ssim"], speedup=s["speedup"],
                          transformer_speedup=s["transformer_speedup"])
    balanced = quality.from_json(rows["balanced"]["psnr"])
    fresh, cached = quality.from_json(rows["refresh_1"]["psnr"]), quality.from_json(rows["refresh_5"]["psnr"])
    loss = 0.0 if fresh == cached else fresh - cached
    meta = report["meta"]
    result = dict(
        meta=dict(command=command, device=meta["device"], dtype=meta["dtype"], processes=processes,
                  prompts=meta["prompts"], seeds=seeds, **{k: meta["request"][k] for k in ("steps", "num_frames", "height", "width", "guidance_scale")},
                  torch=meta["torch"]),
        variants=rows,
        targets=dict(balanced_psnr=quality.finite_or_inf(balanced), balanced_met=balanced >= TARGET_PSNR, cache_loss_db=quality.finite_or_inf(loss),
                     cache_met=loss <= TARGET_CACHE_LOSS, cache_paired=paired_loss(report, "refresh_1", "refresh_5")),
    )
    write_results(args.out, "quality_demo", result, markdown(result))
    plot_psnr_vs_density(rows, args.out / "quality_demo_psnr_vs_density.png")
    kinds = folder / "head_kinds_balanced.png"
    if kinds.exists():
        shutil.copy(kinds, args.out / "quality_demo_head_kinds.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
