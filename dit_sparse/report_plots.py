"""PNG plots of a comparison: head kinds per layer and head, density per layer, speed against
PSNR. Inputs are `SparseAttention.stats().as_dict()` dicts and the report's per-preset summaries."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from .quality import from_json  # noqa: E402

KINDS = ("spatial", "temporal", "dense", "dense layer")
KIND_COLOURS = ("#4c72b0", "#dd8452", "#c44e52", "#bbbbbb")


def kind_maps(stats: dict) -> dict[str, np.ndarray]:
    """Per "<transformer> / <branch>": a (layers, heads) array of indices into KINDS for the first
    batch item; layers that never ran sparse are "dense layer"."""
    maps = {}
    for transformer, indices in stats["layer_indices"].items():
        branches = sorted({b for name, v in stats["layers"].items() if name.split(".")[0] == transformer for b in v})
        for branch in branches:
            rows = {}
            for layer in indices:
                entry = stats["layers"].get(f"{transformer}.{layer}", {}).get(branch)
                rows[layer] = None if entry is None else [KINDS.index(k) for k in entry["kinds"][0]]
            heads = max((len(r) for r in rows.values() if r is not None), default=0)
            grid = np.full((len(indices), heads), KINDS.index("dense layer"))
            for i, layer in enumerate(indices):
                if rows[layer] is not None:
                    grid[i] = rows[layer]
            maps[f"{transformer} / {branch}"] = grid
    return maps


def plot_head_kinds(stats: dict, path: Path, title: str) -> Path:
    """Layers x heads coloured by the kind each head was given, one panel per CFG branch."""
    maps = kind_maps(stats)
    if not maps:
        raise ValueError("no sparse layer ran, so there are no head kinds to plot")
    fig, axes = plt.subplots(1, len(maps), figsize=(2.2 + 1.8 * len(maps), 4.5), squeeze=False)
    cmap = ListedColormap(KIND_COLOURS)
    for ax, (name, grid) in zip(axes[0], maps.items()):
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(KINDS) - 0.5, aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS]
    fig.legend(handles, KINDS, loc="lower center", ncol=len(KINDS), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def density_per_layer(stats: dict) -> dict[str, list[float]]:
    """Per transformer: each layer's mean density over heads and branches (1.0 where it never ran sparse)."""
    out = {}
    for transformer, indices in stats["layer_indices"].items():
        values = []
        for layer in indices:
            branches = stats["layers"].get(f"{transformer}.{layer}", {})
            values.append(float(np.mean([b["mean_density"] for b in branches.values()])) if branches else 1.0)
        out[transformer] = values
    return out


def plot_density_per_layer(stats_by_preset: dict[str, dict], path: Path) -> Path:
    """Mean density of each layer, one line per preset (and transformer)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for preset, stats in stats_by_preset.items():
        for transformer, values in density_per_layer(stats).items():
            label = preset if len(stats["layer_indices"]) == 1 else f"{preset} ({transformer})"
            ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of blocks computed")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("density per layer (last plan, mean over heads and CFG branches)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speed_vs_psnr(summary: dict[str, dict], path: Path) -> Path:
    """Speed-up over dense against PSNR against dense, one point per preset."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for preset, row in summary.items():
        if preset == "dense" or row.get("psnr") is None:
            continue
        psnr = row["psnr"]
        psnr = min(from_json(psnr), 100.0)  # identical outputs: plot at 100 dB
        ax.scatter(psnr, row["speedup"], s=40)
        ax.annotate(preset, (psnr, row["speedup"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("PSNR against dense (dB)")
    ax.set_ylabel("speed-up over dense (wall time)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
