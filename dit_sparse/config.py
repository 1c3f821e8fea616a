"""SparseAttentionConfig: when attention runs sparse, and how much error a head may take."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dit_sparse.kernels.utils import BACKENDS

PRECISIONS = ("bf16", "int8", "fp8")

PRESETS = {
    # From the quality study on the bundled demo model (docs/results/quality_demo.md, 48 clips):
    # re-profiling every 2nd sparse step loses 0.18 dB against every step where every 5th loses
    # 0.96 dB at recall 0.95, and a 20% dense warm-up beats 10% and 0% (35.3 / 33.7 / 33.7 dB).
    # "balanced" is the field defaults below, so SparseAttentionConfig() and apply(pipe) are it.
    "quality": dict(dense_steps=0.25, dense_layers=1, refresh_every=2, recall=0.98),
    "balanced": dict(),
    "fast": dict(dense_steps=0.1, dense_layers=1, refresh_every=5, recall=0.9),
}


@dataclass
class SparseAttentionConfig:
    """Settings of the sparse attention engine; the defaults are the "balanced" preset.

    Acceptance rule: a candidate pattern (kind x width) is accepted for a head when it keeps,
    averaged over the sampled query rows, at least `recall` of their exact attention mass; the
    cheapest accepted candidate wins, and a head with none stays dense. `recall=1.0` accepts
    nothing short of exact, so every head stays dense.
    `density`, when set, switches to fixed-density mode: each head gets the band of its best
    kind sized to that fraction of blocks (Sparse VideoGen's `sparsity` setting), and `recall`
    only decides between spatial and temporal.
    """

    dense_steps: float | int = 0.2
    """First denoising steps with full attention: float in [0, 1] = fraction, int = count."""
    dense_layers: int = 1
    """The first N transformer blocks always run full attention."""
    refresh_every: int = 2
    """Re-profile every N sparse steps; 1 = every step, 0 = once per generation."""
    num_sampled_queries: int = 64
    """Query rows per head whose exact attention profiling measures (spread over the video)."""
    block_size: int = 128
    """Tokens per query and key block of the block-sparse kernel (a power of two >= 16)."""
    backend: str = "auto"
    """Kernels: "triton" (CUDA), "torch" (the PyTorch reference) or "auto" (Triton on CUDA, else torch)."""
    recall: float = 0.95
    """Attention mass of the sampled rows a head's band must keep (else the head stays dense)."""
    density: float | None = None
    """None: adaptive (each head's cheapest band that keeps `recall`); a fraction in (0, 1]:
    every band sized to that fraction of the key blocks (Sparse VideoGen's `sparsity`)."""
    first_frame_sink: bool = False
    """Spatial heads also attend to the first frame (an attention sink)."""
    precision: str = "bf16"
    """Products of the sparse layers' attention: "bf16" (the input's dtype), or "int8" / "fp8"
    for the quantized kernel (8-bit Q·Kᵀ and P·V, SageAttention's recipe) on a Hopper GPU.
    Elsewhere "int8" / "fp8" run unquantized, with a warning; with backend="torch" they run
    the quantized PyTorch reference (the same numbers, slowly, on any device). Dense layers keep
    the model's own attention; dense warm-up steps too, unless `quantized_warmup`."""
    quantized_warmup: bool = False
    """With precision "int8" / "fp8": the dense warm-up steps run the quantized kernel in dense
    mode (every key block) instead of the model's own attention, where the quantized kernel runs."""
    cache_in_warmup: bool = False
    """With a step cache (`apply(..., cache=...)`): let it serve steps inside the dense warm-up too,
    under its own rules. By default it is held off there, so that the warm-up runs exact; serving
    there saves most on models whose warm-up is a large share of the time (issue 21)."""

    def __post_init__(self):
        def bad(field, value, allowed):
            raise ValueError(f"SparseAttentionConfig.{field}={value!r} is invalid: {allowed}")

        ds = self.dense_steps
        if isinstance(ds, bool) or not isinstance(ds, (int, float)):
            bad("dense_steps", ds, "use a float in [0, 1] (fraction of steps) or an int >= 0 (count)")
        if isinstance(ds, float) and not 0.0 <= ds <= 1.0:
            bad("dense_steps", ds, "a float must lie in [0, 1] (fraction of steps); use an int for a count")
        if isinstance(ds, int) and ds < 0:
            bad("dense_steps", ds, "a count must be >= 0")
        for field in ("dense_layers", "refresh_every"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(field, value, "must be an int >= 0")
        if isinstance(self.num_sampled_queries, bool) or not isinstance(self.num_sampled_queries, int) or self.num_sampled_queries < 1:
            bad("num_sampled_queries", self.num_sampled_queries, "must be an int >= 1")
        bs = self.block_size
        if not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
            bad("block_size", bs, "must be a power of two >= 16")
        if self.backend not in BACKENDS:
            bad("backend", self.backend, f"must be one of {BACKENDS}")
        if not isinstance(self.recall, (int, float)) or not 0.0 < self.recall <= 1.0:
            bad("recall", self.recall, "must lie in (0, 1]")
        if self.density is not None and (not isinstance(self.density, (int, float)) or not 0.0 < self.density <= 1.0):
            bad("density", self.density, "must be None (adaptive) or lie in (0, 1]")
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, f"must be one of {PRECISIONS}")
        if self.quantized_warmup and self.precision == "bf16":
            bad("quantized_warmup", True, 'needs precision "int8" or "fp8" (with "bf16" the warm-up runs the model\'s '
                "own attention)")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SparseAttentionConfig":
        """A named preset ("quality", "balanced", "fast"), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"SparseAttentionConfig preset {name!r} is unknown: choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"SparseAttentionConfig has no field {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_dense_steps(self, total_steps: int) -> int:
        """How many of `total_steps` denoising steps run dense."""
        if isinstance(self.dense_steps, float):
            return min(total_steps, round(self.dense_steps * total_steps))
        return min(total_steps, self.dense_steps)
