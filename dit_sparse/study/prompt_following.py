"""Do the demo model's clips follow their prompts? `dit_sparse.demo.prompt_check` on dense
generations of the study and contact-sheet prompts, per model (`--model LABEL=PATH`, repeatable;
default: the bundled demo model), beside the generator's own clips of the same prompts (the
ceiling of the check), and beside each model's VAE round trip of those clips (its own ceiling: a
transformer cannot draw what its VAE cannot decode). Writes prompt_following.json / .md into --out.

    python scripts/prompt_following.py --out docs/results --seeds 0,1 --device cpu
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dit_sparse import generation as gen
from dit_sparse.demo import SHEET_PROMPTS, STUDY_PROMPTS
from dit_sparse.demo.clips import ClipSpec, render_clips
from dit_sparse.demo.prompt_check import check_clip, parse_prompt, summarise

from .quality_study import study_pipeline, write_results

PROMPTS = tuple(dict.fromkeys(SHEET_PROMPTS + STUDY_PROMPTS))


def generator_clip(prompt: str, num_frames: int, height: int, width: int) -> np.ndarray:
    """The procedural generator's clip of `prompt` (default placement and speeds), (F, H, W, 3) in [0, 1]."""
    p = parse_prompt(prompt)
    start = {"moving left": (0.4, 0.0), "moving right": (-0.4, 0.0), "moving up": (0.0, 0.4), "moving down": (0.0, -0.4),
             "bouncing": (0.0, 0.5)}.get(p.motion, (0.0, 0.0))  # so that the motion stays inside the frame
    spec = ClipSpec(shape=p.shape, colour=p.colour, motion=p.motion, background=p.background,
                    background_colour=p.background_colour, x=start[0], y=start[1])
    clip = render_clips([spec], num_frames, height, width)[0]
    return ((clip.permute(1, 2, 3, 0) + 1) / 2).numpy()


@torch.no_grad()
def round_trip(vae, frames: np.ndarray) -> np.ndarray:
    """`frames` (F, H, W, 3) in [0, 1] encoded by `vae` (latent mode) and decoded again, in the same layout."""
    param = next(vae.parameters())
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(param.device, param.dtype) * 2 - 1
    decoded = vae.decode(vae.encode(clip).latent_dist.mode()).sample[0].float().clamp(-1, 1)
    return ((decoded + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()


def check_model(path, seeds: list[int], args) -> tuple[list[dict], list[dict]]:
    """The VAE round trips of the generator's clips, then dense clips of every prompt and seed from the
    pipeline at `path` (none with --round-trip-only), each checked."""
    pipe, spec, request, _ = study_pipeline(args, path)
    prompts = PROMPTS[: args.prompts]
    trips = [check_clip(round_trip(pipe.vae, generator_clip(p, args.num_frames, args.height, args.width)), p)
             for p in prompts]
    checks = []
    if args.round_trip_only:
        return trips, checks
    for prompt in prompts:
        for seed in seeds:
            result = gen.generate(pipe, spec, replace(request, prompt=prompt, seed=seed))
            checks.append(dict(check_clip(result.frames, prompt), seed=seed))
            print(f"{prompt} (seed {seed}): follows {checks[-1]['follows']}", flush=True)
    return trips, checks


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# Do the demo model's clips follow their prompts?", "",
        f"Command: `{m['command']}` on {m['device']}; {m['num_frames']} frames at {m['height']}x{m['width']}, "
        f"{m['steps']} steps, dense attention, seeds {m['seeds']}. The check (`dit_sparse/demo/prompt_check.py`) "
        "uses the procedural generator's vocabulary only: the prompted object is visible (pixels near its colour "
        "in >= 80% of the frames) and its centroid or area moves as the prompt says. The generator row is the "
        "generator's own clip of each prompt: the ceiling of the check. A model's VAE round trip row is the "
        "generator's clips encoded and decoded by that model's VAE: the ceiling of that model.", "",
        "| model | clips | object visible | moves as asked | follows the prompt | object pixels | background pixels |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in result["models"].items():
        s = r["summary"]
        lines.append(f"| {label} | {s['clips']} | {s['visible']:.0%} | {s['moves']:.0%} | **{s['follows']:.0%}** | "
                     f"{s['object_share']:.1%} | {s['background_share']:.1%} |")
    lines += ["", "## Per prompt (share of seeds that follow)", "",
              "| prompt | " + " | ".join(result["models"]) + " |", "|---|" + "---|" * len(result["models"])]
    for prompt in m["prompts"]:
        cells = []
        for r in result["models"].values():
            mine = [c["follows"] for c in r["checks"] if c["prompt"] == prompt]
            cells.append(f"{np.mean(mine):.0%}" if mine else "-")
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="LABEL=PATH (repeatable; default: the bundled demo model)")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"first N of the {len(PROMPTS)} prompts")
    ap.add_argument("--steps", type=int, default=gen.DEMO_DEFAULTS["steps"])
    ap.add_argument("--num-frames", type=int, default=gen.DEMO_DEFAULTS["num_frames"])
    ap.add_argument("--height", type=int, default=gen.DEMO_DEFAULTS["height"])
    ap.add_argument("--width", type=int, default=gen.DEMO_DEFAULTS["width"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--round-trip-only", action="store_true", help="check the VAE round trips alone, generate nothing")
    args = ap.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model) if args.model else {"bundled demo model": None}
    seeds = [int(s) for s in args.seeds.split(",")]
    prompts = list(PROMPTS[: args.prompts])
    ceiling = [check_clip(generator_clip(p, args.num_frames, args.height, args.width), p) for p in prompts]
    result = dict(
        meta=dict(command="python scripts/prompt_following.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", seeds=seeds,
                  prompts=prompts, steps=args.steps, num_frames=args.num_frames, height=args.height, width=args.width),
        models={"procedural generator": dict(summary=summarise(ceiling), checks=ceiling)},
    )
    for label, path in models.items():
        trips, checks = check_model(path, seeds, args)
        result["models"][f"{label}: VAE round trip"] = dict(summary=summarise(trips), checks=trips)
        if checks:
            result["models"][label] = dict(summary=summarise(checks), checks=checks)
    write_results(args.out, "prompt_following", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
