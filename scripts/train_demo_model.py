"""Train the bundled demo text-to-video model: a small Wan pipeline, on procedural clips.

Stages (each stops at its --minutes budget or --steps cap, then saves the whole pipeline to --out
in fp16, loadable with `WanPipeline.from_pretrained`):
- vae: AutoencoderKLWan learns to reconstruct short clips (L1 on pixels and on their spatial
  gradients, a small KL term); then per-channel latent mean/std of full-length clips go into the
  VAE config, where WanPipeline reads them to de-normalise latents before decoding.
- transformer: the VAE is frozen; clips are rendered and encoded on the GPU, normalised, and the
  transformer and the text encoder (lower learning rate) learn Wan's rectified flow: x_t =
  (1 - s) x0 + s noise, target noise - x0, timestep 1000 s, s logit-normal or uniform (--timestep-sampling)
  then shifted like the scheduler's sigmas (--flow-shift, saved with the pipeline). Captions are
  dropped 10% of the time so classifier-free guidance works.
  Encoding costs more than a training step, so each step encodes a few fresh clips into a pool
  of latents and fills the rest of its batch from the pool (--fresh, --pool).
- all: vae, then transformer, in one process.

--data picks the clips: `clips` (one shape over a background, the bundled demo's) or `scenes`
(several objects, textures, camera pans and zooms, occlusion: issue 18's demo2).

    python scripts/train_demo_model.py --stage vae --minutes 8 --out runs/vae
    python scripts/train_demo_model.py --stage transformer --minutes 8 --init runs/vae --out runs/demo
    python scripts/train_demo_model.py --stage transformer --minutes 8 --init runs/demo --out runs/demo2
    python scripts/train_demo_model.py --size tiny --stage all --steps 2 --num-frames 9 --resolution 64 --out /tmp/x

Resuming: every run keeps its exact training state in --out/training_state.pt (float32 weights,
optimizer moments, EMA, step, minutes spent, generator states) and its step and minutes alone in
--out/training_progress.json, both written every --checkpoint-minutes and when the call ends.
--call-minutes ends a call early; the same command with --resume continues the run (a stage's
--minutes and --steps count over all calls, so the learning-rate schedule runs on; raise them to
extend a finished run) and starts it when --out holds neither file. With the exact state the
continuation is exact, except that the latent pool refills. Without it (a fresh machine that got
only the pipeline folder back) --resume goes on from the pipeline's weights: the optimizer warms
up again, the EMA restarts from those weights and the clips come from new seeds. Bundle the
pipeline folder without the two training files.

demo2 on one GPU, as calls of at most 10 minutes (33 frames of 512x512: 9 x 32 x 32 = 9216
tokens; --size demo2 trains at 512 by default). The first call trains the VAE; then repeat the
second until it prints "[transformer] finished" (--minutes 40: five calls of 8.5 minutes, the
rest of each call going to start-up and saving):

    python scripts/train_demo_model.py --size demo2 --data scenes --stage vae --minutes 3 --out runs/demo2-vae
    python scripts/train_demo_model.py --size demo2 --data scenes --stage transformer --init runs/demo2-vae \
        --minutes 40 --call-minutes 8.5 --out runs/demo2 --resume

The exact state of demo2 is about 180 MB during the transformer stage: it lasts while the machine
stays the same; the pipeline folder (28 MB) and its training_progress.json are what must come
back from each call, so that a later machine can go on from them. Where a call can return only a
few files of limited size (this project's GPU machine: 8 files, 16 MiB each), pack them:
`tar cf - -C runs demo2 --exclude training_state.pt | split -b 15M - $OUT/demo2.tar.`, and on the
next machine `cat demo2.tar.* | tar xf - -C runs`. scripts/train_demo2_call.sh is one such call.
The first attempt trained demo2's VAE from random weights; its round trip failed the prompt check,
and so the model showed nothing (docs/results/demo2_attempt1/). demo2's VAE now starts as a
block-average codec (dit_sparse/demo/vae_init.py) and trains at --vae-lr 1e-5 only to refine it;
if its held-out reconstruction gets worse, it goes back to the start. --compile compiles the
transformer's blocks (diffusers' regional compilation) for the transformer stage; whether it pays
on the GPU is not measured yet (the log's steps/s says).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from diffusers import WanPipeline
from diffusers.utils import logging as diffusers_logging

from dit_sparse import generation as gen
from dit_sparse.demo import build_pipeline, caption, render_clips, sample_specs
from dit_sparse.demo.components import save_pipeline
from dit_sparse.demo.scenes import caption_scene, render_scenes, sample_scenes

TRAIN_DEFAULTS = {  # per --size; "tiny" is for smoke tests on the CPU
    "demo": {"vae_batch": 16, "transformer_batch": 32, "stats_clips": 64, "resolution": 256, "low_every": 0, "vae_frames": 9,
             "vae_lr": 3e-4, "fresh_share": 4, "ema": 0.999},
    "demo2": {"vae_batch": 16, "transformer_batch": 16, "stats_clips": 64, "resolution": 512, "low_every": 4, "vae_frames": 17,
              "vae_lr": 1e-5,  # its VAE starts as a working codec (vae_init), which 1e-4 already breaks on the 1st step
              # attempt 2 spent 46% of its time rendering and encoding 1 clip in 4, and its EMA of 0.999 lagged
              # ~700 steps behind a 1409-step run (docs/results/demo2_attempt2)
              "fresh_share": 8, "ema": 0.997,
              # attempt 2 decided its layouts between noise levels ~0.9999 and 0.97, which shift 3's sampler
              # crosses in one step and logit-normal training barely visits; shift 20 gives that window 4-6
              # of 20 steps at 512 and at 256 (demo2_attempt2/noise_levels*)
              "flow_shift": 20.0, "timestep_sampling": "uniform"},
    "tiny": {"vae_batch": 2, "transformer_batch": 4, "stats_clips": 4, "resolution": 256, "low_every": 0, "vae_frames": 9,
             "vae_lr": 3e-4, "fresh_share": 4, "ema": 0.999},
}
DATA = {  # --data: (sample n specs, caption a spec, render specs)
    "clips": (sample_specs, caption, render_clips),
    "scenes": (sample_scenes, caption_scene, render_scenes),
}
STAGES = ("vae", "transformer")
STATE_FILE = "training_state.pt"
PROGRESS_FILE = "training_progress.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("vae", "transformer", "all"), required=True)
    p.add_argument("--out", required=True, help="pipeline folder to write (save_pretrained)")
    p.add_argument("--init", help="start from this saved pipeline folder instead of random weights")
    p.add_argument("--size", choices=sorted(TRAIN_DEFAULTS), default="demo",
                   help="architecture when there is no --init, and the default batch sizes and resolution")
    p.add_argument("--data", choices=sorted(DATA), default="clips", help="training clips: dit_sparse.demo.clips or .scenes")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget per stage, over all calls of a run")
    p.add_argument("--steps", type=int, help="cap on optimizer steps per stage, over all calls (smoke tests)")
    p.add_argument("--resume", action="store_true", help=f"continue from --out/{STATE_FILE} if it is there")
    p.add_argument("--call-minutes", type=float, help="end this call after this long (and a step); --resume goes on")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0, help=f"write --out/{STATE_FILE} this often")
    p.add_argument("--batch-size", type=int, help="clips per step (demo default: 16 vae, 32 transformer)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the transformer")
    p.add_argument("--vae-lr", type=float, help="peak learning rate of the VAE (default per --size: demo 3e-4, demo2 1e-5)")
    p.add_argument("--text-lr", type=float, default=1e-4, help="peak learning rate of the text encoder")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps; then cosine to 10%% over the budget")
    p.add_argument("--num-frames", type=int, default=33)
    p.add_argument("--resolution", type=int, help="square clip side (default per --size: demo 256, demo2 512)")
    p.add_argument("--low-every", type=int,
                   help="every Nth transformer step trains at --resolution / 2 with 4x the clips, the same tokens, so that "
                        "the model also renders at half size (the CPU demo's); 0: off (default per --size: demo2 4)")
    p.add_argument("--vae-frames", type=int,
                   help="frames per VAE training clip (default per --size: demo 9; demo2 17, as a VAE trained on 9 "
                        "frames decoded frames past the 10th of a 33-frame clip badly)")
    p.add_argument("--vae-crop", type=int, default=128, help="square crop of VAE training clips")
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--stats-clips", type=int, help="full-length clips for the latent mean/std (demo default 64)")
    p.add_argument("--fresh", type=int,
                   help="clips rendered and encoded per transformer step (default per --size: batch/4; demo2 batch/8)")
    p.add_argument("--pool", type=int, help="latents kept for reuse (default 16 x batch; 0: every clip fresh)")
    p.add_argument("--flow-shift", type=float,
                   help="the scheduler's flow shift, for training and, saved with the pipeline, for sampling "
                        "(default per --size: the pipeline's own, 3 as built; demo2 20)")
    p.add_argument("--timestep-sampling", choices=("logit-normal", "uniform"),
                   help="distribution of the noise level before the shift (default per --size: logit-normal; demo2 uniform)")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--max-sequence-length", type=int, default=32)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer's repeated blocks for training (diffusers' regional compilation)")
    p.add_argument("--ema", type=float, help="EMA decay of the transformer weights (0: off; default per --size: 0.999, "
                                             "demo2 0.997)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-dtype", choices=("fp16", "bf16"), default="fp16")
    args = p.parse_args(argv)
    defaults = TRAIN_DEFAULTS[args.size]
    args.stats_clips = args.stats_clips or defaults["stats_clips"]
    args.resolution = args.resolution or defaults["resolution"]
    args.low_every = defaults["low_every"] if args.low_every is None else args.low_every
    args.vae_frames = args.vae_frames or defaults["vae_frames"]
    args.vae_lr = args.vae_lr or defaults["vae_lr"]
    args.ema = defaults["ema"] if args.ema is None else args.ema
    args.timestep_sampling = args.timestep_sampling or defaults.get("timestep_sampling", "logit-normal")
    args.flow_shift = defaults.get("flow_shift") if args.flow_shift is None else args.flow_shift
    args.fresh_share = defaults["fresh_share"]
    args.vae_batch = args.batch_size or defaults["vae_batch"]
    args.transformer_batch = args.batch_size or defaults["transformer_batch"]
    return args


class Budget:
    """Stops a stage at its time budget or step cap, and a call at its own limit; gives the cosine schedule its progress.

    Time counts over all calls of a resumed run: `spent` is what the earlier calls took.
    """

    def __init__(self, minutes: float, steps: int | None, warmup: int, call_minutes: float | None = None,
                 spent: float = 0.0, warm_from: int = 0):
        self.seconds, self.steps, self.warmup = minutes * 60, steps, warmup
        self.call_seconds = None if call_minutes is None else call_minutes * 60
        self.spent, self.warm_from = spent, warm_from
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self.start

    def this_call(self) -> float:
        return time.perf_counter() - self.start

    def call_over(self) -> bool:
        return self.call_seconds is not None and self.this_call() >= self.call_seconds

    def progress(self, step: int) -> float:
        by_time = self.elapsed() / self.seconds
        return min(1.0, max(by_time, step / self.steps) if self.steps else by_time)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0 or (self.steps is not None and step >= self.steps)

    def lr_scale(self, step: int) -> float:
        warm = min(1.0, (step - self.warm_from + 1) / max(self.warmup, 1))
        return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * self.progress(step))))


class ClipSource:
    """Random captioned clips (--data: clips or scenes) rendered on the training device, from a seeded CPU generator."""

    def __init__(self, seed: int, device: torch.device, data: str):
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device
        self.sample, self.caption, self.render = DATA[data]

    def batch(self, n: int, num_frames: int, resolution: int):
        specs = self.sample(n, self.generator)
        clips = self.render(specs, num_frames, resolution, resolution, device=self.device)
        return clips, [self.caption(s) for s in specs]


class EMA:
    """Exponential moving average of a module's parameters, with the usual short-run warm-up."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int):
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def copy_to_module(self):
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @contextlib.contextmanager
    def applied(self):
        """The module holds the averaged weights inside the block, its own ones again after it."""
        raw = [p.detach().clone() for p in self.params]
        self.copy_to_module()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)


def generators(device: torch.device, **named) -> dict:
    """`named` torch.Generator / random.Random objects plus torch's default ones (VAE posterior sampling uses them)."""
    named["torch_cpu"] = torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        named["torch_cuda"] = torch.cuda.default_generators[index]
    return named


def generator_states(named: dict) -> dict:
    return {k: g.get_state() if isinstance(g, torch.Generator) else g.getstate() for k, g in named.items()}


def restore_generators(named: dict, states: dict):
    for k, g in named.items():
        g.set_state(states[k]) if isinstance(g, torch.Generator) else g.setstate(states[k])


def resume_stage(resume: dict | None, optimizer, named: dict, seed: int, ema=None) -> tuple[int, float | None, float, int]:
    """Step, running loss, seconds spent and the step where the warm-up starts, for a stage that `resume` continues.

    Without an exact state (only PROGRESS_FILE), the weights are the pipeline's, the optimizer
    warms up afresh from the resumed step and the generators are seeded by it, so that the run
    goes on to clips it has not seen rather than repeating its first ones.
    """
    if not resume:
        return 0, None, 0.0, 0
    step = resume["step"]
    if "optimizer" not in resume:
        for k, g in named.items():
            g.manual_seed(seed + step + zlib.crc32(k.encode())) if isinstance(g, torch.Generator) else g.seed(seed + step)
        return step, resume["running"], resume["seconds"], step
    optimizer.load_state_dict(resume["optimizer"])
    if ema:
        torch._foreach_copy_(ema.shadow, [s.to(ema.shadow[0].device) for s in resume["ema"]])
    restore_generators(named, resume["generators"])
    return step, resume["running"], resume["seconds"], 0


class Checkpoint:
    """The run's exact training state in --out (STATE_FILE), beside the pipeline as it would ship.

    `save` writes the pipeline (the EMA weights where there is an EMA), then float32 weights of all
    three modules, optimizer moments, EMA, step, seconds spent and generator states, so that a
    later call with --resume continues the same run; and the step and seconds alone in
    PROGRESS_FILE, with which the pipeline folder by itself can go on where the state is too large
    to keep. `loaded` is what this call resumed from (None: a fresh run).
    """

    def __init__(self, pipe: WanPipeline, args, loaded: dict | None):
        self.pipe, self.args, self.loaded = pipe, args, loaded
        self.path = Path(args.out) / STATE_FILE
        self.interval = args.checkpoint_minutes * 60
        self.last = time.perf_counter()

    def resumes(self, stage: str) -> dict | None:
        """The loaded state if it is of `stage`."""
        return self.loaded if self.loaded and self.loaded["stage"] == stage else None

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.interval

    def save(self, stage: str, step: int, budget: Budget, finished: bool, optimizer=None, ema=None, named=None,
             running=None):
        with ema.applied() if ema else contextlib.nullcontext():
            save(self.pipe, self.args)
        state = {
            "stage": stage, "finished": finished, "step": step, "seconds": budget.elapsed(), "running": running,
            "weights": {name: {k: v.float() for k, v in getattr(self.pipe, name).state_dict().items()}
                        for name in ("transformer", "vae", "text_encoder")},
            "optimizer": optimizer.state_dict(), "ema": ema.shadow if ema else None, "generators": generator_states(named),
        }
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.path)
        progress = {k: state[k] for k in ("stage", "finished", "step", "seconds", "running")}
        (self.path.parent / PROGRESS_FILE).write_text(json.dumps(progress, indent=2) + "\n")
        self.last = time.perf_counter()
        print(f"[{stage}] state at step {step}: {self.path} ({self.path.stat().st_size / 2**20:.0f} MiB)", flush=True)


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def log(stage, step, budget, loss, samples, extra=""):
    """`samples`: clips trained on in this call."""
    elapsed = budget.elapsed()
    print(
        f"[{stage}] step {step} loss {loss:.4f} {step / elapsed:.2f} steps/s {samples / budget.this_call():.1f} clips/s "
        f"{elapsed / 60:.1f} min {extra}",
        flush=True,
    )


def set_lr(optimizer, scale):
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * scale


def train_vae(pipe: WanPipeline, args, device: torch.device, checkpoint: Checkpoint) -> bool:
    """Trains until the stage's budget or the call's limit; returns whether the stage finished."""
    batch_size = args.vae_batch
    vae = pipe.vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": vae.parameters(), "peak_lr": args.vae_lr}], betas=(0.9, 0.99), weight_decay=1e-4)
    source = ClipSource(args.seed, device, args.data)
    crop = min(args.vae_crop, args.resolution)
    frames = min(args.vae_frames, args.num_frames)
    rng = random.Random(args.seed)
    named = generators(device, source=source.generator, crops=rng)
    step, running, spent, warm_from = resume_stage(checkpoint.resumes("vae"), optimizer, named, args.seed)
    budget = Budget(args.minutes, args.steps, args.warmup, args.call_minutes, spent, warm_from)
    first_step = step
    held_out = ClipSource(args.seed + 3, device, args.data).batch(4, args.num_frames, args.resolution)[0]
    start = None
    if step == 0:  # a VAE that starts as a working codec (vae_init) goes back to it if training made it worse
        start = (reconstruction_psnr(vae, held_out, device), copy.deepcopy(vae.state_dict()))
        print(f"[vae] held-out reconstruction at the start: psnr {start[0]:.1f} dB", flush=True)
    while not budget.done(step):
        with torch.no_grad():
            clips, _ = source.batch(batch_size, frames, args.resolution)
            top, left = rng.randrange(args.resolution - crop + 1), rng.randrange(args.resolution - crop + 1)
            clips = clips[..., top : top + crop, left : left + crop]
        set_lr(optimizer, budget.lr_scale(step))
        with autocast(device):
            posterior = vae.encode(clips).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        loss_l1 = (recon - clips).abs().mean()
        loss_grad = sum(
            (recon.diff(dim=d) - clips.diff(dim=d)).abs().mean() for d in (-1, -2)
        )
        kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - 1 - posterior.logvar.float()).mean()
        loss = loss_l1 + loss_grad + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % args.log_every == 0 or budget.done(step):
            psnr = clip_psnr(F.mse_loss(recon.detach(), clips).item())
            log("vae", step, budget, running, (step - first_step) * batch_size, f"psnr {psnr:.1f} dB kl {kl.item():.2f}")
        if budget.call_over():
            break
        if checkpoint.due():
            checkpoint.save("vae", step, budget, False, optimizer, None, named, running)
    finished = budget.done(step)
    if finished:
        vae.eval().requires_grad_(False)
        psnr = reconstruction_psnr(vae, held_out, device)
        print(f"[vae] held-out reconstruction after {step} steps: psnr {psnr:.1f} dB", flush=True)
        if start is not None and psnr < start[0]:
            vae.load_state_dict(start[1])
            print(f"[vae] worse than at the start: back to the starting weights ({start[0]:.1f} dB)", flush=True)
        store_latent_stats(vae, args, device)
    checkpoint.save("vae", step, budget, finished, optimizer, None, named, running)
    return finished


@torch.no_grad()
def encode(vae, clips, device):
    with autocast(device):
        return vae.encode(clips).latent_dist.mode().float()


def clip_psnr(mse: float) -> float:
    """PSNR of clips in [-1, 1] (peak-to-peak 2) with this mean squared error."""
    return -10 * math.log10(mse / 4 + 1e-12)


@torch.no_grad()
def reconstruction_psnr(vae, clips, device) -> float:
    """PSNR of `clips` (in [-1, 1]) encoded to the posterior mode and decoded, one clip at a time."""
    training = vae.training
    vae.eval()
    error = 0.0
    for clip in clips.split(1):
        with autocast(device):
            recon = vae.decode(vae.encode(clip).latent_dist.mode()).sample.float()
        error += F.mse_loss(recon, clip).item() / len(clips)
    vae.train(training)
    return clip_psnr(error)


@torch.no_grad()
def store_latent_stats(vae, args, device: torch.device):
    """Per-channel mean/std of full-length clip latents, into the VAE config (WanPipeline reads them)."""
    source = ClipSource(args.seed + 1, device, args.data)
    chunk = min(8, args.stats_clips)
    latents = []
    for _ in range(math.ceil(args.stats_clips / chunk)):
        clips = source.batch(chunk, args.num_frames, args.resolution)[0]
        latents.append(encode(vae, clips, device))
    latents = torch.cat(latents).transpose(0, 1).flatten(1).double()
    mean, std = latents.mean(1), latents.std(1)
    vae.register_to_config(latents_mean=[round(v, 5) for v in mean.tolist()], latents_std=[round(v, 5) for v in std.tolist()])
    print(f"[vae] latent mean {[round(v, 2) for v in mean.tolist()]}", flush=True)
    print(f"[vae] latent std  {[round(v, 2) for v in std.tolist()]}", flush=True)


class LatentPool:
    """Normalised latents and captions of recent clips, reused to fill most of each batch.

    It starts empty and grows by the fresh clips of every step up to `size`, then replaces its
    oldest entries, so no time goes into filling it up front.
    """

    def __init__(self, vae, source: ClipSource, args, device: torch.device, size: int, resolution: int, seed: int):
        self.vae, self.source, self.args, self.device = vae, source, args, device
        self.resolution = resolution
        z_dim = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean, device=device).view(1, z_dim, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std, device=device).view(1, z_dim, 1, 1, 1)
        self.size, self.cursor = size, 0
        self.latents, self.captions = [], []
        self.picker = torch.Generator().manual_seed(seed)
        self.seconds = {"render": 0.0, "encode": 0.0}

    def _timed(self, phase: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] += time.perf_counter() - start
        return out

    def fresh(self, n: int):
        clips, captions = self._timed("render", self.source.batch, n, self.args.num_frames, self.resolution)
        return (self._timed("encode", encode, self.vae, clips, self.device) - self.mean) / self.std, captions

    def batch(self, batch_size: int, num_fresh: int):
        latents, captions = self.fresh(num_fresh)
        if not self.size:
            return latents, captions
        for latent, text in zip(latents.to(torch.bfloat16), captions):
            if len(self.latents) < self.size:
                self.latents.append(latent)
                self.captions.append(text)
            else:
                self.latents[self.cursor], self.captions[self.cursor] = latent, text
                self.cursor = (self.cursor + 1) % self.size
        picks = torch.randint(len(self.latents), (batch_size - num_fresh,), generator=self.picker).tolist()
        reused = torch.stack([self.latents[i] for i in picks]).float() if picks else latents[:0]
        return torch.cat([latents, reused]), captions + [self.captions[i] for i in picks]


def flow_inputs(latents, shift: float, generator: torch.Generator, sampling: str = "logit-normal"):
    """Noisy latents, timesteps and velocity targets of Wan's rectified flow.

    The noise level is u, logit-normal or uniform, shifted like the scheduler's sigmas. Uniform u
    trains every level as often as a sampler with evenly spaced steps visits it, the ones next to
    pure noise included, which logit-normal u reaches rarely.
    """
    b = latents.shape[0]
    if sampling == "uniform":
        u = torch.rand(b, generator=generator, device=latents.device)
    else:
        u = torch.sigmoid(torch.randn(b, generator=generator, device=latents.device))
    sigma = shift * u / (1 + (shift - 1) * u)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    s = sigma.view(b, 1, 1, 1, 1)
    return (1 - s) * latents + s * noise, sigma * 1000, noise - latents


def train_transformer(pipe: WanPipeline, args, device: torch.device, checkpoint: Checkpoint) -> bool:
    """Trains until the stage's budget or the call's limit; returns whether the stage finished."""
    batch_size = args.transformer_batch
    pool_size = 16 * batch_size if args.pool is None else args.pool
    num_fresh = min(batch_size, args.fresh or max(1, batch_size // args.fresh_share)) if pool_size else batch_size
    if pool_size and pool_size < batch_size:
        raise SystemExit(f"--pool {pool_size} must be 0 or at least the batch size {batch_size}")
    if pipe.vae.config.latents_std == [1.0] * pipe.vae.config.z_dim:
        print("[transformer] warning: the VAE has no latent statistics (train stage vae first, or pass --init)")
    vae = pipe.vae.eval().requires_grad_(False)
    transformer = pipe.transformer.train().requires_grad_(True)
    text_encoder = pipe.text_encoder.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [{"params": transformer.parameters(), "peak_lr": args.lr}, {"params": text_encoder.parameters(), "peak_lr": args.text_lr}],
        betas=(0.9, 0.99), weight_decay=0.01,
    )
    ema = EMA(transformer, args.ema) if args.ema else None
    if args.compile:  # in place: the weights, their names and the saved pipeline stay the same
        transformer.compile_repeated_blocks(fullgraph=True)
    if args.flow_shift is not None:  # saved with the pipeline: it samples at the shift it was trained at
        pipe.scheduler.register_to_config(flow_shift=args.flow_shift)
    shift = pipe.scheduler.config.flow_shift
    print(f"[transformer] noise levels: {args.timestep_sampling} u, flow shift {shift:g}", flush=True)
    noise_gen = torch.Generator(device).manual_seed(args.seed + 3)
    drop_gen = random.Random(args.seed + 4)
    pool = LatentPool(vae, ClipSource(args.seed + 5, device, args.data), args, device, pool_size, args.resolution,
                      args.seed + 2)
    named = generators(device, source=pool.source.generator, picker=pool.picker, noise=noise_gen, dropout=drop_gen)
    low = None  # (pool, batch, fresh) of the half-size steps
    if args.low_every:
        if args.resolution % 32:
            raise SystemExit(f"--low-every needs a --resolution divisible by 32 (half of it by 16), not {args.resolution}")
        low_pool = LatentPool(vae, ClipSource(args.seed + 6, device, args.data), args, device, 4 * pool_size,
                              args.resolution // 2, args.seed + 7)
        low = (low_pool, 4 * batch_size, 4 * num_fresh)
        named.update(low_source=low_pool.source.generator, low_picker=low_pool.picker)
        print(f"[transformer] 1 step in {args.low_every} at {args.resolution // 2}x{args.resolution // 2}, "
              f"{4 * batch_size} clips", flush=True)
    step, running, spent, warm_from = resume_stage(checkpoint.resumes("transformer"), optimizer, named, args.seed, ema)
    data_seconds, samples = 0.0, 0
    print(f"[transformer] {num_fresh} fresh clips per step of {batch_size}, pool of {pool_size}", flush=True)
    budget = Budget(args.minutes, args.steps, args.warmup, args.call_minutes, spent, warm_from)
    while not budget.done(step):
        data_start = time.perf_counter()
        if low and step % args.low_every == args.low_every - 1:
            latents, captions = low[0].batch(*low[1:])
        else:
            latents, captions = pool.batch(batch_size, num_fresh)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        data_seconds += time.perf_counter() - data_start
        samples += latents.shape[0]
        captions = ["" if drop_gen.random() < args.caption_dropout else c for c in captions]
        noisy, timestep, target = flow_inputs(latents, shift, noise_gen, args.timestep_sampling)
        set_lr(optimizer, budget.lr_scale(step))
        with autocast(device):
            embeds = pipe._get_t5_prompt_embeds(  # the pipeline's own text path: eos appended, zeros past each prompt
                prompt=captions, max_sequence_length=args.max_sequence_length, device=device, dtype=torch.float32
            )
            pred = transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*transformer.parameters(), *text_encoder.parameters()], 1.0)
        optimizer.step()
        if ema:
            ema.update(step)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % args.log_every == 0 or budget.done(step):
            call = budget.this_call()
            pools = [pool] + ([low[0]] if low else [])
            render, encoded = (100 * sum(p.seconds[k] for p in pools) / call for k in ("render", "encode"))
            extra = (f"lr {optimizer.param_groups[0]['lr']:.2e} data {100 * data_seconds / call:.0f}% of the time "
                     f"(render {render:.0f}%, encode {encoded:.0f}%)")
            log("transformer", step, budget, running, samples, extra)
        if budget.call_over():
            break
        if checkpoint.due():
            checkpoint.save("transformer", step, budget, False, optimizer, ema, named, running)
    finished = budget.done(step)
    checkpoint.save("transformer", step, budget, finished, optimizer, ema, named, running)
    if finished:  # the state keeps the raw weights, so that a longer budget can go on from them
        if ema:
            ema.copy_to_module()
        transformer.eval().requires_grad_(False)
        text_encoder.eval().requires_grad_(False)
    return finished


def demo_settings(args) -> dict:
    """The call settings the model was trained for (`generation.demo_defaults` reads them): its clip
    size, and on the CPU the half size that --low-every also trained."""
    settings = dict(gen.DEMO_DEFAULTS, num_frames=args.num_frames, height=args.resolution, width=args.resolution)
    if args.low_every:
        settings["cpu"] = dict(height=args.resolution // 2, width=args.resolution // 2)
    return settings


def save(pipe, args):
    dtype = torch.float16 if args.save_dtype == "fp16" else torch.bfloat16
    save_pipeline(pipe, args.out, dtype)
    (Path(args.out) / gen.DEMO_SETTINGS).write_text(json.dumps(demo_settings(args), indent=2) + "\n")
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file() and not f.name.startswith(STATE_FILE))
    parts = {
        name: sum(f.stat().st_size for f in (Path(args.out) / name).rglob("*") if f.is_file())
        for name in ("transformer", "vae", "text_encoder", "tokenizer")
    }
    listed = ", ".join(f"{name} {b / 2**20:.1f}" for name, b in parts.items())
    print(f"saved {args.out}: {size / 2**20:.1f} MiB ({listed} MiB)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    diffusers_logging.set_verbosity_error()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    state_path, progress_path = Path(args.out) / STATE_FILE, Path(args.out) / PROGRESS_FILE
    loaded = None
    if args.resume and state_path.exists():
        loaded = torch.load(state_path, map_location="cpu", weights_only=True)
    elif args.resume and progress_path.exists():
        loaded = json.loads(progress_path.read_text())
        print(f"no {state_path}: going on from the pipeline's weights; the optimizer and the EMA start afresh", flush=True)
    if loaded:
        pipe = WanPipeline.from_pretrained(args.out, dtype=torch.float32)
        for name, weights in loaded.get("weights", {}).items():
            getattr(pipe, name).load_state_dict(weights)
        finished = " (finished)" if loaded["finished"] else ""
        print(f"resuming {args.out}: {loaded['stage']}{finished} at step {loaded['step']}, "
              f"{loaded['seconds'] / 60:.1f} min in", flush=True)
    elif args.init:
        pipe = WanPipeline.from_pretrained(args.init, dtype=torch.float32)
    else:
        pipe = build_pipeline(args.size, seed=args.seed)
    if args.resume and not loaded:
        print(f"no {state_path} nor {PROGRESS_FILE}: starting the run", flush=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for name in ("transformer", "vae", "text_encoder"):
        count = sum(p.numel() for p in getattr(pipe, name).parameters())
        print(f"{name}: {count / 1e6:.2f} M parameters", flush=True)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if loaded:
        if STAGES.index(stages[-1]) < STAGES.index(loaded["stage"]):
            raise SystemExit(f"{state_path} is of stage {loaded['stage']}, which comes after --stage {args.stage}")
        spent = Budget(args.minutes, args.steps, args.warmup, spent=loaded["seconds"])
        done = STAGES.index(loaded["stage"]) + (loaded["finished"] and spent.done(loaded["step"]))
        stages = tuple(s for s in stages if STAGES.index(s) >= done)  # those before `done` are trained
    checkpoint = Checkpoint(pipe, args, loaded)
    for stage in stages:
        train = train_vae if stage == "vae" else train_transformer
        if not train(pipe, args, device, checkpoint):
            print(f"[{stage}] call over: the same command with --resume goes on", flush=True)
            return
        print(f"[{stage}] finished", flush=True)
    if not stages:
        print(f"nothing left to train in {args.out}", flush=True)


if __name__ == "__main__":
    main()
