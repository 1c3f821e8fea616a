"""Attention census: the exact recall of every head's best spatial and temporal band, and the
kind the project's classifier would give it, layer by layer, head by head, step by step.

The online profiler (`dit_sparse.profiling`) judges each head from a few sampled query rows.
The census is its ground truth: while a Wan pipeline generates, a capturing processor takes the
self-attention q and k after RoPE (the project's own Wan processor computes them) at a few
denoising steps, and the exact attention mass every query block sends to every key block is
summed over *all* video query rows, in native and in position-major order, by chunks of rows
through the project's block log-sum-exp op (`sampled_block_lse`): full softmax, no sampling, and
never an S x S matrix. From those block masses:

- the recall of the spatial and the temporal band that fixed-density mode would use at each
  density (`PatternBank(density=d)`: each kind's narrowest band reaching d);
- the kind the adaptive classifier picks at each recall target (the cheapest candidate of the
  adaptive `PatternBank` whose exact recall reaches the target, else dense: `choose_patterns`'
  rule), beside the kind the sampled profiler itself picks from the same q and k.

`main` runs it on one or more pipeline folders (the bundled demo model by default) and writes
attention_census.json / .md and a recall-against-density plot.

    python scripts/attention_census.py --prompts 3 --out docs/results
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dit_sparse import generation as gen
from dit_sparse.config import SparseAttentionConfig
from dit_sparse.demo import STUDY_PROMPTS
from dit_sparse.families import find_family
from dit_sparse.families.wan import WAN, SparseWanAttnProcessor
from dit_sparse.geometry import TokenGrid
from dit_sparse.kernels import sampled_block_lse
from dit_sparse.pattern_bank import PatternBank
from dit_sparse.patterns import KINDS, band_block_mask
from dit_sparse.profiling import choose_patterns, make_bank
from dit_sparse.schedule import SchedulerClock

DENSITIES = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5)
RECALL_TARGETS = (0.9, 0.95, 0.97)
STEP_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
HEAD_KINDS = ("spatial", "temporal", "dense")
BRANCHES = ("cond", "uncond")  # WanPipeline's order of the two calls of a CFG step
CHUNK_ROWS = 256

PUBLISHED = (
    ("Sparse VideoGen (SVG): share of spatial vs temporal heads", "Wan 2.1, HunyuanVideo, CogVideoX 1.5",
     "Not found: no per-model split of spatial and temporal heads was found in the sources searched. The paper "
     "classifies each head online (the kind whose output on sampled rows is closer to full attention), its "
     "heads being 'dynamically classified' (abstract); its HunyuanVideo script samples 64 rows "
     "(`--num_sampled_rows 64`) at "
     "`--sparsity 0.2`, with the first layers and timesteps dense",
     "https://arxiv.org/abs/2502.01776 ; https://github.com/svg-project/Sparse-VideoGen/blob/main/scripts/hyvideo_inference.sh"),
    ("Sparse VideoGen2 (SVG2): attention recall against density", "Wan 2.1 I2V 14B",
     "Oracle token-level top-k: 13% of the computation reaches 95% attention recall (near-lossless, PSNR 27). "
     "SVG's and SpargeAttn's block selections stay below the oracle at every budget (Fig. 3; their curves "
     "are plotted only, no values in the text)",
     "https://arxiv.org/abs/2505.18875 (section 3.1, Fig. 3)"),
    ("AdaSpa: recall of sparse patterns at sparsity 0.9 (density 0.1)", "HunyuanVideo 720p, 129 frames",
     "Three typical heads, patterns in the caption's order TopK / Block (32) / Col / Diag / Diag+Col: "
     "0.54 / 0.52 / 0.16 / 0.46 / 0.47; 0.93 / 0.90 / 0.18 / 0.79 / 0.79; 1.0 / 1.0 / 0.12 / 0.96 / 0.93 (Fig. 5). "
     "Top-k recall at density 0.1 varies with layer and head (colour scale 0.2 to 1.0) but not with the step "
     "(Fig. 6a)",
     "https://arxiv.org/abs/2502.21079 (Fig. 5, Fig. 6)"),
    ("SpargeAttn: sparsity kept at near-lossless end-to-end metrics", "CogVideoX, Mochi, Open-Sora-Plan, Flux, SD3.5",
     "Sparsity (skipped share of the QK and PV block products, mean over layers in real generations): "
     "CogVideoX (17K tokens) 0.46, Mochi (22K) 0.47, Open-Sora-Plan (38K) 0.34, Flux (4.5K) 0.38, SD3.5 (4.5K) "
     "0.31 (Table 1); in CogVideoX sparsity varies with layer and head and grows over the timesteps (section 4.3)",
     "https://arxiv.org/abs/2502.18137 (Table 1, section 4.3)"),
)
"""(what, models, figure as published, source address) of real models' statistics: a comparison, not a
target; their masks (token-level top-k, blocks of 32-128, other band shapes) and averages differ from the census'."""


def block_mass(q: torch.Tensor, k: torch.Tensor, grid: TokenGrid, block_size: int, *, scale=None,
               chunk_rows: int = CHUNK_ROWS, backend: str = "auto") -> torch.Tensor:
    """(B, H, 2, nb, nb) float64: the exact attention mass the video query rows of each query
    block send to each key block, summed over the rows; layout 0 native (spatial bands), 1
    position-major (temporal bands), each row's query block taken in that layout as
    `PatternBank` takes it. q, k: (B, H, S, D) in native order. Rows go `chunk_rows` at a time
    through `sampled_block_lse` (one chunk x S of scores at most); text rows are left out, as
    profiling never samples them."""
    order = grid.order
    nb = math.ceil(grid.num_tokens / block_size)
    rows = torch.arange(grid.num_video_tokens, device=q.device) + order.video_start
    query_blocks = (rows // block_size, order.frame_major_index(q.device)[rows] // block_size)
    B, H = q.shape[:2]
    out = torch.zeros(2, B, H, nb, nb, dtype=torch.float64, device=q.device)
    for chunk, native, position_major in zip(rows.split(chunk_rows), *(b.split(chunk_rows) for b in query_blocks)):
        lse = sampled_block_lse(q.index_select(2, chunk), k, block_size=block_size, scale=scale, order=order,
                                backend=backend)
        mass = lse.softmax(-1).double()  # (B, H, 2, n, nb): each layout's blocks share a row's whole mass
        out[0].index_add_(2, native, mass[:, :, 0])
        out[1].index_add_(2, position_major, mass[:, :, 1])
    return out.permute(1, 2, 0, 3, 4)


class CensusBands:
    """The candidates the census scores on one grid, as (kind layout, block mask) pairs: per
    density, the spatial and the temporal band fixed-density mode sizes to it, and every
    candidate of the adaptive bank (`bank`, on `device`) the classifier chooses from."""

    def __init__(self, grid: TokenGrid, config: SparseAttentionConfig, densities=DENSITIES, device="cpu"):
        self.grid = grid
        self.config = dataclasses.replace(config, density=None)
        self.densities = tuple(densities)
        self.fixed = [PatternBank(grid, block_size=config.block_size, num_sampled_queries=1, density=d,
                                  first_frame_sink=config.first_frame_sink) for d in self.densities]
        self.bank = make_bank(grid, self.config, device)
        self.fixed_masks, self.fixed_layouts = self._masks([c for bank in self.fixed for c in bank.candidates], device)
        self.adaptive_masks, self.adaptive_layouts = self._masks(self.bank.candidates, device)

    def _masks(self, candidates, device):
        nb = math.ceil(self.grid.num_tokens / self.config.block_size)
        masks = [torch.ones(nb, nb, dtype=torch.bool) if c.kind == "dense" else
                 band_block_mask(self.grid, c.kind, c.width, self.config.block_size, self.config.first_frame_sink)
                 for c in candidates]
        layouts = torch.tensor([int(c.kind == "temporal") for c in candidates])
        return torch.stack(masks).double().to(device), layouts.to(device)

    @property
    def band_densities(self) -> list[list[float]]:
        """Per density, the block density of the [spatial, temporal] band actually used."""
        return [[c.density for c in bank.candidates] for bank in self.fixed]

    def recall(self, mass: torch.Tensor, adaptive: bool = False) -> torch.Tensor:
        """(B, H, C) float64 from `block_mass`'s (B, H, 2, nb, nb): the share of the video rows'
        attention mass each candidate keeps. Fixed: C = densities x (spatial, temporal);
        adaptive: the adaptive bank's candidates."""
        masks, layouts = (self.adaptive_masks, self.adaptive_layouts) if adaptive else (self.fixed_masks, self.fixed_layouts)
        kept = torch.einsum("bhcqk,cqk->bhc", mass[:, :, layouts], masks)
        return kept / self.grid.num_video_tokens

    def classify(self, recall: torch.Tensor, target: float) -> torch.Tensor:
        """(B, H) adaptive candidate index at a recall target, from (B, H, C) adaptive recall:
        the cheapest candidate keeping `target`, else dense (the rule of `choose_patterns`)."""
        accepted = (recall >= target) | self.bank.is_dense
        return torch.where(accepted, self.bank.densities.to(recall.dtype), float("inf")).argmin(-1)

    def sampled(self, q: torch.Tensor, k: torch.Tensor, target: float) -> torch.Tensor:
        """(B, H) the online profiler's pick at `target` from its sampled rows (`choose_patterns`)."""
        return choose_patterns(q, k, self.bank, dataclasses.replace(self.config, recall=target))

    def kinds(self, picks: torch.Tensor) -> list[int]:
        """HEAD_KINDS index of each adaptive candidate index of a (H,) tensor."""
        return [HEAD_KINDS.index(self.bank.candidates[int(c)].kind) for c in picks]


class CensusProcessor(SparseWanAttnProcessor):
    """The project's Wan self-attention processor (its projections, norms and RoPE), whose
    attention call hands q and k to the census and then runs the model's own dense attention."""

    def attend(self, query, key, value, **kwargs):
        self.runtime.observe(self.layer, query.transpose(1, 2), key.transpose(1, 2))
        return self.dense(query, key, value)


class CensusRecorder:
    """Captures a Wan pipeline's self-attention at chosen denoising steps and keeps, per (step,
    branch, layer), the exact per-head recall of the census bands and the classifier's picks
    (exact, and the sampled profiler's). `close()` gives the layers their processors back."""

    def __init__(self, pipe, config: SparseAttentionConfig, steps, densities=DENSITIES, targets=RECALL_TARGETS,
                 chunk_rows: int = CHUNK_ROWS):
        transformer = pipe.transformer
        if find_family(transformer) is not WAN:
            raise ValueError(f"the census captures Wan transformers, got {type(transformer).__name__}")
        self.config, self.steps, self.densities, self.targets = config, set(steps), densities, targets
        self.chunk_rows = chunk_rows
        self.clock = SchedulerClock(pipe.scheduler)
        self.processors = {}  # layer -> processor, filled by SparseProcessor.__init__
        self.layers = WAN.self_attention(transformer)
        self.originals = {layer: attn.processor for layer, attn in self.layers}
        for layer, attn in self.layers:
            attn.set_processor(CensusProcessor(self, layer))
        self.pre_hook = transformer.register_forward_pre_hook(self._begin_call, with_kwargs=True)
        self.bands: CensusBands | None = None
        self.call = None  # (step, branch) of the transformer call running, None where it is not captured
        self.calls_in_step: dict[int, int] = {}
        self.records: list[dict] = []
        self.seconds = 0.0

    def _begin_call(self, module, args, kwargs):
        inputs = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
        grid = WAN.grid(module, inputs)
        if self.bands is None or self.bands.grid != grid:
            self.bands = CensusBands(grid, self.config, self.densities, inputs["hidden_states"].device)
        step = self.clock.read().step
        branch = self.calls_in_step.get(step, 0)
        self.calls_in_step[step] = branch + 1
        self.call = (step, branch) if step in self.steps else None

    def new_generation(self):
        """Forget the steps and records seen: the next transformer call is step 0 of a new generation."""
        self.calls_in_step = {}
        self.records = []

    def observe(self, layer: int, q: torch.Tensor, k: torch.Tensor):
        """Census of one layer's (B, H, S, D) q and k at the current call, if it is captured
        (batch item 0: the census generates one video per prompt)."""
        if self.call is None:
            return
        start = time.perf_counter()
        q, k = q[:1], k[:1]
        bands = self.bands
        mass = block_mass(q, k, bands.grid, self.config.block_size, chunk_rows=self.chunk_rows,
                          backend=self.config.backend)
        exact = bands.recall(mass, adaptive=True)
        picks = [bands.classify(exact, target)[0] for target in self.targets]
        sampled = [bands.sampled(q, k, target)[0] for target in self.targets]
        step, branch = self.call
        self.records.append(dict(
            step=step, branch=branch, layer=layer,
            recall=bands.recall(mass)[0].view(-1, len(self.densities), len(KINDS)).float().cpu().numpy(),
            kind=[bands.kinds(p) for p in picks], sampled_kind=[bands.kinds(p) for p in sampled],
            density=[[bands.bank.candidates[int(c)].density for c in p] for p in picks],
        ))
        self.seconds += time.perf_counter() - start

    def close(self):
        self.pre_hook.remove()
        for layer, attn in self.layers:
            attn.set_processor(self.originals[layer])


def census_steps(num_steps: int, fractions=STEP_FRACTIONS) -> list[int]:
    """The denoising step indices at `fractions` of a `num_steps` schedule (0 = first, 1 = last)."""
    return sorted({round(f * (num_steps - 1)) for f in fractions})


def run_model(path: Path, label: str, args) -> dict:
    """The census of one pipeline folder: per prompt, one generation (latents only) with the
    recorder on; returns the JSON-ready section of that model."""
    device, _ = gen.pick_device(args.device)
    pipe = gen.load_pipeline(path, dtype=gen.pick_dtype(args.dtype, device), device=device)
    config = SparseAttentionConfig(block_size=args.block_size, num_sampled_queries=args.sampled_queries)
    steps = census_steps(args.steps)
    recorder = CensusRecorder(pipe, config, steps, chunk_rows=args.chunk_rows)
    samples, start = [], time.perf_counter()
    prompts = list(STUDY_PROMPTS[: args.prompts])
    try:
        for p, prompt in enumerate(prompts):
            recorder.new_generation()
            pipe(prompt=prompt, num_frames=args.num_frames, height=args.height, width=args.width,
                 num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                 max_sequence_length=args.max_sequence_length, output_type="latent",
                 generator=torch.Generator(device="cpu").manual_seed(args.seed))
            samples.append(recorder.records)
            print(f"{label}: prompt {p + 1}/{len(prompts)} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    finally:
        recorder.close()
    bands = recorder.bands
    return dict(
        label=label, model=str(path), device=device, prompts=prompts, seed=args.seed, steps=steps,
        num_steps=args.steps, frames=args.num_frames, height=args.height, width=args.width,
        grid=dataclasses.asdict(bands.grid), block_size=config.block_size, sampled_queries=config.num_sampled_queries,
        densities=list(DENSITIES), band_densities=bands.band_densities, targets=list(RECALL_TARGETS),
        wall_s=round(time.perf_counter() - start, 1), census_s=round(recorder.seconds, 1),
        **pack(samples, steps, len(recorder.layers)),
    )


def pack(samples: list[list[dict]], steps: list[int], num_layers: int) -> dict:
    """Records of every prompt as arrays indexed (prompt, branch, step, layer, head, ...), as lists."""
    branches = 1 + max(r["branch"] for records in samples for r in records)
    heads = samples[0][0]["recall"].shape[0]
    shape = (len(samples), branches, len(steps), num_layers, heads)
    recall = np.zeros(shape + samples[0][0]["recall"].shape[1:])
    kind, sampled, density = (np.zeros(shape + (len(RECALL_TARGETS),), dtype=dtype) for dtype in (int, int, float))
    seen = np.zeros(shape[:4], dtype=bool)
    for p, records in enumerate(samples):
        for r in records:
            at = (p, r["branch"], steps.index(r["step"]), r["layer"])
            seen[at] = True
            recall[at] = r["recall"]
            kind[at] = np.array(r["kind"]).T
            sampled[at] = np.array(r["sampled_kind"]).T
            density[at] = np.array(r["density"]).T
    if not seen.all():
        raise RuntimeError("the census missed some (prompt, branch, step, layer): was every step computed?")
    return dict(branches=list(BRANCHES[:branches]), recall=np.round(recall, 5).tolist(), kind=kind.tolist(),
                sampled_kind=sampled.tolist(), chosen_density=np.round(density, 5).tolist())


def summarise(section: dict) -> dict:
    """Means and counts of one model's census (from its JSON section)."""
    recall = np.array(section["recall"])  # (P, B, T, L, H, densities, kinds)
    kind = np.array(section["kind"])  # (P, B, T, L, H, targets)
    sampled = np.array(section["sampled_kind"])
    density = np.array(section["chosen_density"])
    flat = recall.reshape(-1, *recall.shape[-2:])
    best = flat.max(-1)
    curve = dict(spatial=flat[..., 0].mean(0).tolist(), temporal=flat[..., 1].mean(0).tolist(),
                 best=best.mean(0).tolist(), best_min=best.min(0).tolist())
    by_step = recall.mean((0, 1, 3, 4))  # (T, densities, kinds)
    counts, by_step_counts = {}, {}
    for t, target in enumerate(section["targets"]):
        k = kind[..., t]
        counts[str(target)] = dict(
            **{name: int((k == i).sum()) for i, name in enumerate(HEAD_KINDS)},
            mean_density=float(density[..., t].mean()), sampled_agrees=float((sampled[..., t] == k).mean()),
            sampled_counts={name: int((sampled[..., t] == i).sum()) for i, name in enumerate(HEAD_KINDS)})
        by_step_counts[str(target)] = [{name: int((k[:, :, s] == i).sum()) for i, name in enumerate(HEAD_KINDS)}
                                       for s in range(k.shape[2])]
    return dict(curve=curve, by_step=by_step.tolist(), counts=counts, by_step_counts=by_step_counts,
                per_head=recall.mean((0, 1, 2)).tolist(), samples=int(np.prod(kind.shape[:-1])))


def kind_grid(kinds: np.ndarray) -> list[list[str]]:
    """(samples, T, L, H) kind indices -> per (layer, head) one letter per step (S, T, D): the
    kind most samples get, upper case where all agree, lower case where they do not."""
    letters = "STD"
    grid = []
    for layer in range(kinds.shape[2]):
        row = []
        for head in range(kinds.shape[3]):
            cell = ""
            for step in range(kinds.shape[1]):
                values = np.bincount(kinds[:, step, layer, head], minlength=3)
                letter = letters[int(values.argmax())]
                cell += letter if values.max() == values.sum() else letter.lower()
            row.append(cell)
        grid.append(row)
    return grid


def markdown(sections: list[dict], command: str) -> str:
    """The census report: summary side by side, then each model's tables, then published figures."""
    summaries = [summarise(s) for s in sections]
    first = sections[0]
    lines = [
        "# Attention census: exact recall of the spatial and temporal bands, per layer and head", "",
        f"Report written by `{command}`; the census run of each model is its *run by* row below (`--reuse` "
        "keeps an earlier run's models and adds new ones beside them).", "",
        "Ground truth for the online profiler. During each generation the self-attention q and k after RoPE "
        "(the project's Wan processor computes them) are captured at the listed denoising steps, for both CFG "
        "branches. For every head the exact attention mass each query block sends to each key block is summed "
        "over all video query rows (full softmax, by chunks of rows through the project's block log-sum-exp op; "
        "no S x S matrix). *Recall* of a band = share of the rows' attention mass inside it (what "
        "`SparseAttentionConfig.recall` thresholds). The spatial/temporal band at density d is the one "
        "fixed-density mode uses (`PatternBank(density=d)`: each kind's narrowest band whose block density "
        "reaches d). The kind at a recall target is what the adaptive classifier picks with exact recall: the "
        "cheapest candidate of the adaptive bank keeping the target, else dense (`choose_patterns`' rule). "
        "The sampled profiler's own pick (its sampled rows, same q and k) is compared with it. The engine also "
        "keeps the first layer and the first 20% of steps dense whatever the census says.", "",
        "## Setting", "",
        "| | " + " | ".join(s["label"] for s in sections) + " |", "|---|" + "---|" * len(sections),
    ]
    rows = [
        ("run by", lambda s: f"`{s['command']}`"),
        ("model folder", lambda s: f"`{s['model']}`"),
        ("clip (frames x height x width)", lambda s: f"{s['frames']}x{s['height']}x{s['width']}"),
        ("token grid (frames x h x w)", lambda s: f"{s['grid']['frames']}x{s['grid']['height']}x{s['grid']['width']} "
                                                  f"= {s['grid']['frames'] * s['grid']['height'] * s['grid']['width']}"),
        ("block size / sampled rows of the profiler", lambda s: f"{s['block_size']} / {s['sampled_queries']}"),
        ("prompts x seed", lambda s: f"{len(s['prompts'])} (study prompts 1-{len(s['prompts'])}) x seed {s['seed']}"),
        ("captured steps (of the schedule)", lambda s: f"{s['steps']} of {s['num_steps']}"),
        ("layers x heads", lambda s: f"{np.array(s['kind']).shape[3]} x {np.array(s['kind']).shape[4]}"),
        ("(prompt, branch, step, layer, head) samples", lambda s: str(int(np.prod(np.array(s['kind']).shape[:5])))),
        ("device, wall time (census part)", lambda s: f"{s['device']}, {s['wall_s']:.0f} s ({s['census_s']:.0f} s)"),
    ]
    lines += [f"| {name} | " + " | ".join(get(s) for s in sections) + " |" for name, get in rows]
    lines += ["", "## Recall against density (mean over every sample)", "",
              "Best band of each kind at each density; *best of two* = the head's better kind; *worst head* = the "
              "lowest best-of-two recall of any sample. The band's real block density is in brackets (it rounds up "
              "to whole bands).", "",
              "| density | " + " | ".join(f"{s['label']} spatial | temporal | best of two | worst head" for s in sections)
              + " |", "|---|" + "---|---|---|---|" * len(sections)]
    for i, d in enumerate(first["densities"]):
        cells = []
        for s, m in zip(sections, summaries):
            sd, td = s["band_densities"][i]
            c = m["curve"]
            cells.append(f"{c['spatial'][i]:.3f} ({sd:.2f}) | {c['temporal'][i]:.3f} ({td:.2f}) | "
                         f"{c['best'][i]:.3f} | {c['best_min'][i]:.3f}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += ["", "![recall against density](attention_census.png)", "",
              "## Head kinds the classifier picks at each recall target", "",
              "Counts over all (prompt, branch, step, layer, head) samples, with exact recall; *mean density* of "
              "the chosen candidates (dense = 1); *sampled agrees* = share of samples where the online profiler's "
              "sampled rows give the same kind.", "",
              "| model | recall target | spatial | temporal | dense | mean density | sampled agrees | sampled profiler: S / T / D |",
              "|---|---|---|---|---|---|---|---|"]
    for s, m in zip(sections, summaries):
        for target, c in m["counts"].items():
            sc = c["sampled_counts"]
            lines.append(f"| {s['label']} | {target} | {c['spatial']} | {c['temporal']} | {c['dense']} | "
                         f"{c['mean_density']:.3f} | {c['sampled_agrees']:.1%} | {sc['spatial']} / {sc['temporal']} / {sc['dense']} |")
    for s, m in zip(sections, summaries):
        lines += model_section(s, m)
    lines += published_section()
    return "\n".join(lines) + "\n"


def model_section(s: dict, m: dict) -> list[str]:
    """One model's per-step and per-(layer, head) tables."""
    densities, steps = s["densities"], s["steps"]
    kind = np.array(s["kind"])  # (P, B, T, L, H, targets)
    samples = kind.reshape(-1, *kind.shape[2:])
    lines = ["", f"## {s['label']}: by denoising step", "",
             "Mean recall of the best spatial / temporal band at density 0.25 and 0.5, and the kinds (S / T / D "
             "counts over prompts, branches, layers, heads) at each recall target.", "",
             "| step | spatial@0.25 | temporal@0.25 | spatial@0.5 | temporal@0.5 | "
             + " | ".join(f"kinds @{t}" for t in s["targets"]) + " |",
             "|---|---|---|---|---|" + "---|" * len(s["targets"])]
    i25, i50 = densities.index(0.25), densities.index(0.5)
    for t, step in enumerate(steps):
        r = m["by_step"][t]
        kinds = [m["by_step_counts"][str(target)][t] for target in s["targets"]]
        lines.append(f"| {step} | {r[i25][0]:.3f} | {r[i25][1]:.3f} | {r[i50][0]:.3f} | {r[i50][1]:.3f} | "
                     + " | ".join(f"{k['spatial']} / {k['temporal']} / {k['dense']}" for k in kinds) + " |")
    lines += ["", f"## {s['label']}: kinds per layer x head over the steps", "",
              f"One letter per captured step ({', '.join(map(str, steps))}): S spatial, T temporal, D dense; the kind "
              "most (prompt, branch) samples get, lower case where they disagree.", ""]
    heads = kind.shape[4]
    for t, target in enumerate(s["targets"]):
        grid = kind_grid(samples[..., t])
        lines += [f"Recall target {target}:", "", "| layer | " + " | ".join(f"head {h}" for h in range(heads)) + " |",
                  "|---|" + "---|" * heads]
        lines += [f"| {layer} | " + " | ".join(row) + " |" for layer, row in enumerate(grid)]
        lines.append("")
    lines += [f"## {s['label']}: recall per layer x head (mean over prompts, branches and steps)", "",
              "Each cell: best spatial / best temporal band recall.", "",
              "| layer | head | " + " | ".join(f"d={d}" for d in densities) + " |", "|---|---|" + "---|" * len(densities)]
    for layer, row in enumerate(m["per_head"]):
        for head, values in enumerate(row):
            lines.append(f"| {layer} | {head} | " + " | ".join(f"{v[0]:.3f} / {v[1]:.3f}" for v in values) + " |")
    return lines


def published_section() -> list[str]:
    lines = ["", "## Published statistics of real models (comparison, not targets)", "",
             "Figures as their sources state them; their definitions (token-level vs block-level masks, "
             "per-step vs averaged, which layers) differ from the census', so they are context, not a yardstick.", "",
             "| what | models | published figure | source |", "|---|---|---|---|"]
    lines += [f"| {what} | {models} | {figure} | {source} |" for what, models, figure, source in PUBLISHED]
    return lines


def plot(sections: list[dict], path: Path):
    """Mean recall of the best spatial and temporal band against the band's real block density
    (several target densities can share one band: bands are whole frames or positions), per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(sections):
        curve = summarise(s)["curve"]
        colour = colours[i % len(colours)]
        spatial, temporal = np.array(s["band_densities"]).T
        ax.plot(spatial, curve["spatial"], "-o", color=colour, label=f"{s['label']}: spatial")
        ax.plot(temporal, curve["temporal"], "--s", color=colour, label=f"{s['label']}: temporal")
    right = min(1.0, max(max(row) for s in sections for row in s["band_densities"]) + 0.05)
    ax.plot([0, right], [0, right], color="#999999", lw=0.8, ls="-.", label="uniform attention (recall = density)")
    for target in RECALL_TARGETS:
        ax.axhline(target, color="#999999", lw=0.6, ls=":")
    ax.set_xlim(0, right)
    ax.set_xlabel("block density of the band (fraction of key blocks computed)")
    ax.set_ylabel("recall (share of attention mass kept)")
    ax.set_title("Best band recall, mean over layers, heads, steps, prompts")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_model(value: str) -> tuple[str, Path]:
    """`[LABEL=]PATH` (PATH "demo": the bundled demo model) -> (label, pipeline folder)."""
    label, _, path = value.rpartition("=")
    folder, _ = gen.resolve_model(None if path == "demo" else path)
    return label or ("demo" if path == "demo" else Path(path).name), folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", type=parse_model, metavar="[LABEL=]PATH",
                    help="a Wan pipeline folder, or demo (the bundled model, the default); give it several times "
                         "to put models side by side")
    ap.add_argument("--reuse", type=Path, help="an earlier attention_census.json: its models are kept (not re-run) "
                                              "beside the ones --model runs")
    ap.add_argument("--prompts", type=int, default=3, help="the first N study prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=gen.DEMO_DEFAULTS["steps"])
    ap.add_argument("--num-frames", type=int, default=gen.DEMO_DEFAULTS["num_frames"])
    ap.add_argument("--height", type=int, default=gen.DEMO_DEFAULTS["height"])
    ap.add_argument("--width", type=int, default=gen.DEMO_DEFAULTS["width"])
    ap.add_argument("--guidance-scale", type=float, default=gen.DEMO_DEFAULTS["guidance_scale"])
    ap.add_argument("--max-sequence-length", type=int, default=gen.DEMO_DEFAULTS["max_sequence_length"])
    ap.add_argument("--block-size", type=int, default=SparseAttentionConfig.block_size)
    ap.add_argument("--sampled-queries", type=int, default=SparseAttentionConfig.num_sampled_queries,
                    help="rows the compared online profiler samples")
    ap.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="query rows per block-mass chunk")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = ap.parse_args(argv)
    command = "python scripts/attention_census.py " + " ".join(argv)
    sections = json.loads(args.reuse.read_text())["models"] if args.reuse else []
    models = args.model or ([] if sections else [parse_model("demo")])
    for label, folder in models:
        sections = [s for s in sections if s["label"] != label]
        sections.append(dict(run_model(folder, label, args), command=command))
    args.out.mkdir(parents=True, exist_ok=True)
    report = dict(command=command, models=sections, summaries=[summarise(s) for s in sections])
    (args.out / "attention_census.json").write_text(json.dumps(report) + "\n")
    plot(sections, args.out / "attention_census.png")
    md = markdown(sections, command)
    (args.out / "attention_census.md").write_text(md)
    print(md)
    return report
