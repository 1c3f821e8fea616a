"""Where along the noise schedule a demo model decides its clips: its flow loss per noise level.

At noise level s the flow target is noise - x0 from x_s = (1 - s) x0 + s noise. A model that
knows nothing about x0 but its mean (0 in normalised latents) predicts x_s / s; the model's loss
beside that one says how much of the clip x_s still shows. Where the ratio falls from 1 towards
its floor is where the sampler creates the clip's layout; the scheduler's first steps must land
there, or the layout is fixed by the first step's guess from the noise. The table ends with the
noise levels of the first sampling steps for each --shifts value.

With --from-levels, a second table asks whether the model can finish a clip whose layout is given:
the generator's clip of a study prompt, noised to level s, is denoised from there (Euler steps on
the scheduler's own levels below s, classifier-free guidance) and checked as prompt_following
checks a generated clip. If clips started inside the window follow their prompts and clips
started from pure noise do not, what is missing is the first steps, not the rest.

    python scripts/noise_levels.py --model runs/demo2 --height 256 --width 256 --shifts 3,12 --out docs/results/x
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UniPCMultistepScheduler, WanPipeline

from dit_sparse.demo.prompt_check import check_clip, summarise
from dit_sparse.demo.scenes import caption_scene, render_scenes, sample_scenes

from .prompt_following import PROMPTS, generator_clip

LEVELS = (0.9999, 0.999, 0.997, 0.99, 0.97, 0.94, 0.9, 0.8, 0.6, 0.4, 0.2)


@torch.no_grad()
def flow_loss_by_level(pipe: WanPipeline, clips: torch.Tensor, captions: list[str], levels=LEVELS, seed: int = 0,
                       max_sequence_length: int = 32) -> list[dict]:
    """Per noise level: the transformer's flow loss and that of the mean predictor x_s / s, on `clips` in [-1, 1]."""
    device = pipe.transformer.device
    x0 = _normalised_latents(pipe.vae, clips)[0]
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


def _normalised_latents(vae, clips: torch.Tensor) -> torch.Tensor:
    device = next(vae.parameters()).device
    z = torch.cat([vae.encode(clip[None].to(device)).latent_dist.mode() for clip in clips]).float()
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean, std = (torch.tensor(getattr(vae.config, k), device=device).view(shape) for k in ("latents_mean", "latents_std"))
    return (z - mean) / std, mean, std


@torch.no_grad()
def finish_from_level(pipe: WanPipeline, prompt: str, level: float, steps: int, guidance: float, num_frames: int,
                      height: int, width: int, seed: int = 0, max_sequence_length: int = 32) -> np.ndarray:
    """The generator's clip of `prompt` noised to `level`, denoised by the model: (F, H, W, 3) frames in [0, 1].

    Euler steps of the flow over the levels of the pipeline's scheduler (set to `steps`) below
    `level`, with classifier-free guidance against the empty prompt, as the pipeline samples.
    """
    device = pipe.transformer.device
    clip = torch.from_numpy(generator_clip(prompt, num_frames, height, width)).permute(3, 0, 1, 2)[None] * 2 - 1
    x0, mean, std = _normalised_latents(pipe.vae, clip)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    x = (1 - level) * x0 + level * noise
    pipe.scheduler.set_timesteps(steps)
    levels = [level] + [float(s) for s in pipe.scheduler.sigmas if float(s) < level]
    if levels[-1] != 0.0:
        levels.append(0.0)
    cond, uncond = pipe.encode_prompt(prompt, negative_prompt="", do_classifier_free_guidance=True,
                                      max_sequence_length=max_sequence_length, device=device)
    for s, s_next in zip(levels[:-1], levels[1:]):
        timestep = torch.full((1,), s * 1000.0, device=device)
        v_cond, v_uncond = (pipe.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=e,
                                             return_dict=False)[0] for e in (cond, uncond))
        x = x + (s_next - s) * (v_uncond + guidance * (v_cond - v_uncond))
    decoded = pipe.vae.decode(x * std + mean).sample[0].float().clamp(-1, 1)
    return ((decoded + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()


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
    ap.add_argument("--from-levels", default="", help="comma-separated levels to finish the generator's clips from")
    ap.add_argument("--prompts", type=int, default=6, help="study prompts to finish from each --from-levels level")
    ap.add_argument("--guidance", type=float, default=5.0)
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
    finished = []
    for level in [float(v) for v in args.from_levels.split(",") if v]:
        checks = [check_clip(finish_from_level(pipe, prompt, level, args.steps, args.guidance, args.num_frames,
                                               args.height, args.width, args.seed), prompt)
                  for prompt in PROMPTS[: args.prompts]]
        finished.append({"level": level, **summarise(checks), "checks": checks})
        print(f"from level {level}: follows {finished[-1]['follows']:.0%}", flush=True)
    if finished:
        lines += [
            "", f"Finishing the generator's clips of {args.prompts} study prompts from level s (guidance "
            f"{args.guidance:g}, the scheduler's levels below s):", "",
            "| start level s | object visible | moves as asked | follows the prompt |", "|---|---|---|---|",
            *(f"| {f['level']} | {f['visible']:.0%} | {f['moves']:.0%} | **{f['follows']:.0%}** |" for f in finished),
        ]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "noise_levels.md").write_text("\n".join(lines) + "\n")
        payload = {"command": command, "levels": rows, "first_levels": {str(k): v for k, v in firsts.items()},
                   "finished_from": finished}
        (out / "noise_levels.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
