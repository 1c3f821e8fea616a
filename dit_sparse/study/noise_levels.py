"""Where along the noise schedule a demo model decides its clips: its flow loss per noise level.

At noise level s the flow target is noise - x0 from x_s = (1 - s) x0 + s noise. A model that
knows nothing about x0 but its mean (0 in normalised latents) predicts x_s / s; the model's loss
beside that one says how much of the clip x_s still shows. Where the ratio falls from 1 towards
its floor is where the sampler creates the clip's layout; the scheduler's first steps must land
there, or the layout is fixed by the first step's guess from the noise. The table ends with the
noise levels of the first sampling steps for each --shifts value.

    python scripts/noise_levels.py --model runs/demo2 --height 256 --width 256 --shifts 3,12 --out docs/results/x
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UniPCMultistepScheduler, WanPipeline

from dit_sparse.demo.scenes import caption_scene, render_scenes, sample_scenes

LEVELS = (0.9999, 0.999, 0.997, 0.99, 0.97, 0.94, 0.9, 0.8, 0.6, 0.4, 0.2)


@torch.no_grad()
def flow_loss_by_level(pipe: WanPipeline, clips: torch.Tensor, captions: list[str], levels=LEVELS, seed: int = 0,
                       max_sequence_length: int = 32) -> list[dict]:
    """Per noise level: the transformer's flow loss and that of the mean predictor x_s / s, on `clips` in [-1, 1]."""
    device, vae = pipe.transformer.device, pipe.vae
    z = torch.cat([vae.encode(clip[None].to(device)).latent_dist.mode() for clip in clips]).float()
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean, std = (torch.tensor(getattr(vae.config, k), device=device).view(shape) for k in ("latents_mean", "latents_std"))
    x0 = (z - mean) / std
    embeds = pipe._get_t5_prompt_embeds(prompt=captions, max_sequence_length=max_sequence_length, device=device,
                                        dtype=torch.float32)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for s in levels:
        noisy = (1 - s) * x0 + s * noise
        timestep = torch.full((len(x0),), s * 1000.0, device=device)
        pred = pipe.transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)[0]
        model, mean_only = (F.mse_loss(p.float(), noise - x0).item() for p in (pred, noisy / s))
        rows.append({"level": s, "model": model, "mean_predictor": mean_only, "ratio": model / mean_only})
    return rows


def first_levels(scheduler_config, shift: float, steps: int, count: int = 5) -> list[float]:
    """The noise levels at which a pipeline's UniPC scheduler (its config) evaluates the model first, at this shift."""
    scheduler = UniPCMultistepScheduler.from_config(scheduler_config, flow_shift=shift)
    scheduler.set_timesteps(steps)
    return [round(float(s), 4) for s in scheduler.sigmas[:count]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="saved demo pipeline folder")
    ap.add_argument("--clips", type=int, default=4, help="scenes of the training generator, rendered afresh")
    ap.add_argument("--num-frames", type=int, default=33)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--shifts", default="3", help="comma-separated flow shifts whose first sampling levels to list")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="folder for noise_levels.json / .md (default: print only)")
    args = ap.parse_args(argv)
    if not (Path(args.model) / "model_index.json").exists():
        raise SystemExit(f"--model {args.model} is not a saved pipeline folder (no model_index.json)")
    pipe = WanPipeline.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    specs = sample_scenes(args.clips, torch.Generator().manual_seed(args.seed + 1))
    clips = render_scenes(specs, args.num_frames, args.height, args.width)
    rows = flow_loss_by_level(pipe, clips, [caption_scene(s) for s in specs], seed=args.seed)
    shifts = [float(s) for s in args.shifts.split(",")]
    firsts = {shift: first_levels(pipe.scheduler.config, shift, args.steps) for shift in shifts}
    command = shlex.join(["python", "scripts/noise_levels.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Flow loss per noise level: where the model decides its clips", "",
        f"Command: `{command}`; {args.clips} scenes, {args.num_frames} frames at {args.height}x{args.width}, "
        "one noise draw. Mean predictor: x_s / s (knows only that x0 has mean 0). Ratio 1: the model "
        "sees nothing of the clip yet; its fall is where the layout is decided.", "",
        "| noise level s | model | mean predictor | ratio |", "|---|---|---|---|",
        *(f"| {r['level']} | {r['model']:.4f} | {r['mean_predictor']:.4f} | {r['ratio']:.3f} |" for r in rows), "",
        f"First noise levels of the {args.steps}-step sampler:", "",
        *(f"- shift {shift:g}: {', '.join(str(s) for s in levels)}" for shift, levels in firsts.items()),
    ]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "noise_levels.md").write_text("\n".join(lines) + "\n")
        payload = {"command": command, "levels": rows, "first_levels": {str(k): v for k, v in firsts.items()}}
        (out / "noise_levels.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
