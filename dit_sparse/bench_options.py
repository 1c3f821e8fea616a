"""The options of `dit-sparse bench` (dit_sparse/bench/kernels.py), kept free of heavy imports
so that building the CLI's parser imports neither torch nor the kernels."""

from __future__ import annotations

import argparse

SHAPE_NAMES = ("wan480", "wan720", "hunyuan720", "cogvideox")  # the keys of bench.kernels.SHAPES


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the benchmark's options to `ap`."""
    ap.add_argument("--shapes", default="wan480,wan720", help=f"comma list of {list(SHAPE_NAMES)}")
    ap.add_argument("--out", default="docs/results", help="folder for kernels_<gpu>.json/.md")
    ap.add_argument("--sweep", action="store_true", help="time tile/pipeline configs instead")
    ap.add_argument("--phase", action="store_true", help="time key lists walked from the start vs from "
                    "each program's launch phase instead")
    return ap
