"""Does re-using head plans across denoising steps cost quality? On the bundled demo model,
the balanced preset with plans profiled at every sparse step (refresh_every 1) against plans
re-used for five (refresh_every 5), at recall 0.95 and 0.97, over new prompts x seeds.

Runs one `dit-sparse compare` per (setting, seed group) side by side on the device (the demo
model leaves a GPU mostly idle), then writes quality_caching.json / .md into --out: per setting
the mean PSNR against dense and the mean density; per pair the per-clip differences
(`dit_sparse.quality.paired_differences`).

    python scripts/caching_study.py --out docs/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dit_sparse import quality
from dit_sparse.demo import STUDY_PROMPTS

SETTINGS = {  # name -> overrides of the balanced preset
    "r1": ["--refresh-every", "1"],
    "r5": ["--refresh-every", "5"],
    "r5m": ["--refresh-every", "5", "--recall", "0.97"],
    "r1m": ["--refresh-every", "1", "--recall", "0.97"],
}
PAIRS = [("r1", "r5"), ("r1m", "r5m"), ("r1", "r1m")]  # (reference, variant)
TARGET_CACHE_LOSS = 0.5


def compare_commands(prompts: Path, seed_groups: list[str], folder: Path) -> dict[str, list[str]]:
    """Run name -> the dit-sparse compare command of one setting and seed group."""
    return {
        f"{name}_{seeds.replace(',', '_')}": ["dit-sparse", "compare", "--prompts", str(prompts), "--seeds", seeds,
                                              "--presets", "dense,balanced", *overrides, "--dense-steps", "0.2",
                                              "--out", str(folder / f"{name}_{seeds.replace(',', '_')}")]
        for name, overrides in SETTINGS.items() for seeds in seed_groups
    }


def run(commands: dict[str, list[str]], folder: Path, timeout_s: float) -> dict:
    """All commands at once; each run's balanced and dense records, keyed by run name."""
    logs = {name: open(folder / f"{name}.log", "w") for name in commands}
    procs = {name: subprocess.Popen(cmd, stdout=logs[name], stderr=subprocess.STDOUT) for name, cmd in commands.items()}
    for name, proc in procs.items():
        code = proc.wait(timeout=timeout_s)
        logs[name].close()
        if code != 0:
            sys.exit(f"{name} failed: see {folder / f'{name}.log'}")
    runs = {}
    for name in commands:
        report = json.loads((folder / name / "report.json").read_text())
        runs[name] = dict(configs=report["configs"], runs=[
            {k: r[k] for k in ("preset", "prompt_index", "seed", "psnr", "ssim", "mean_density", "wall_s")}
            for r in report["runs"]])
    return runs


def summarise(runs: dict) -> dict:
    """Per setting: clips, mean PSNR, mean density; per pair: paired per-clip differences."""
    psnr, density = {}, {}
    for name, data in runs.items():
        setting = name.split("_")[0]
        for r in data["runs"]:
            if r["preset"] == "balanced":
                psnr.setdefault(setting, {})[r["prompt_index"], r["seed"]] = quality.from_json(r["psnr"])
                density.setdefault(setting, []).append(r["mean_density"])
    clips = sorted(psnr["r1"])
    settings = {s: dict(overrides=" ".join(SETTINGS[s]), clips=len(psnr[s]), psnr=float(np.mean([psnr[s][c] for c in clips])),
                        mean_density=float(np.mean(density[s]))) for s in SETTINGS}
    pairs = {f"{a}-{b}": quality.paired_differences([psnr[a][c] - psnr[b][c] for c in clips]) for a, b in PAIRS}
    return dict(settings=settings, pairs=pairs)


def markdown(summary: dict, command: str, commands: list[str], device: str) -> str:
    lines = [
        "# Caching head plans across steps: what it costs in quality", "",
        f"Command: `{command}` on {device}. The bundled demo model, balanced preset (dense_steps 0.2, "
        "33 frames at 256x256, 20 steps), 8 study prompts x seeds 6-13: clips the quality study "
        "(`quality_demo.md`, seeds 0-5) did not use. PSNR of each clip against its dense clip; the "
        "pairs compare the same clips under two settings.", "",
        "| setting | overrides of balanced | clips | mean PSNR dB | mean density |", "|---|---|---|---|---|",
    ]
    for name, s in summary["settings"].items():
        lines.append(f"| {name} | `{s['overrides']}` | {s['clips']} | {s['psnr']:.2f} | {s['mean_density']:.3f} |")
    lines += ["", "| pair (reference - variant) | mean dB | standard error | median | clips worse by > 3 dB | better by > 3 dB | mean of the rest |",
              "|---|---|---|---|---|---|---|"]
    for name, p in summary["pairs"].items():
        lines.append(f"| {name} | {p['mean']:.2f} | {p['sem']:.2f} | {p['median']:.2f} | {p['worse_by_3db']} | "
                     f"{p['better_by_3db']} | {p['mean_without_3db_moves']:.2f} |")
    lines += ["", f"Target (issue 6): caching (refresh_every 5) loses at most {TARGET_CACHE_LOSS} dB against re-profiling "
              "every step.", "", "The compare runs:", ""] + [f"- `{c}`" for c in commands]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dit_sparse_caching",
                    help="folder of the compare runs")
    ap.add_argument("--seed-groups", default="6,8,10,12;7,9,11,13", help="';'-separated seed lists, one process each")
    ap.add_argument("--runs", type=Path, help="a caching_runs.json of an earlier run: summarise it, run nothing")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds each compare may take")
    args = ap.parse_args(argv)
    command = "python scripts/caching_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    prompts = args.work / "prompts.txt"
    commands = compare_commands(prompts, args.seed_groups.split(";"), args.work)
    if args.runs:
        runs = json.loads(args.runs.read_text())
        device = runs.pop("device", "?")
    else:
        import torch

        args.work.mkdir(parents=True, exist_ok=True)
        prompts.write_text("\n".join(STUDY_PROMPTS) + "\n")
        runs = run(commands, args.work, args.timeout)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        (args.work / "caching_runs.json").write_text(json.dumps(dict(runs, device=device)))
    summary = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    shown = [" ".join(c).replace(str(args.work), "$WORK") for c in commands.values()]
    (args.out / "quality_caching.json").write_text(json.dumps(dict(command=command, device=device, commands=shown, **summary), indent=1))
    md = markdown(summary, command, shown, device)
    (args.out / "quality_caching.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
