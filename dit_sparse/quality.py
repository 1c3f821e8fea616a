"""How much a video changed: PSNR and SSIM per frame (torchmetrics), averaged over frames, and
LPIPS when torchvision and the AlexNet weights are on this machine (never downloaded, never made up)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"  # what torchvision's alexnet (LPIPS' backbone) loads


def _frames(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2)  # (F, 3, H, W)


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of each frame's PSNR in dB (frames in [0, 1]); inf when identical."""
    per_frame = peak_signal_noise_ratio(_frames(frames), _frames(reference), data_range=1.0,
                                        reduction="none", dim=(1, 2, 3))
    return float(per_frame.mean())


def ssim(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of each frame's SSIM (frames in [0, 1])."""
    return float(structural_similarity_index_measure(_frames(frames), _frames(reference), data_range=1.0,
                                                     reduction="none").mean())


def paired_differences(diffs) -> dict:
    """Statistics of per-clip PSNR differences (dB, reference minus variant): mean, its standard
    error, median, how many clips moved by more than 3 dB either way (trajectories that
    diverged) and the mean over the others. Infinite differences (identical clips) are left out."""
    diffs = np.asarray(diffs, dtype=np.float64)
    finite = diffs[np.isfinite(diffs)]
    steady = finite[np.abs(finite) <= 3]
    return dict(clips=len(diffs), mean=float(finite.mean()), sem=float(finite.std(ddof=1) / np.sqrt(len(finite))),
                median=float(np.median(finite)), worse_by_3db=int((finite > 3).sum()), better_by_3db=int((finite < -3).sum()),
                mean_without_3db_moves=float(steady.mean()) if len(steady) else float("nan"))


class LPIPS:
    """LPIPS (AlexNet) of frames against a reference. It needs torchvision and the AlexNet weights
    in torch hub's checkpoints folder, and downloads neither; without them `available` is False
    and `reason` says what is missing and where the weights belong."""

    def __init__(self, device: str = "cpu"):
        self.metric = None
        self.reason = None
        weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS
        needs = f"LPIPS needs torchvision and the AlexNet weights at {weights}; nothing is downloaded"
        try:
            import torchvision  # noqa: F401
        except ImportError:
            self.reason = f"torchvision is not installed ({needs})"
            return
        if not weights.exists():
            self.reason = (f"the AlexNet weights are not on this machine ({needs}; torchvision.models.alexnet("
                           "weights='DEFAULT') fetches them on a machine with internet access)")
            return
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()
            self.device = device
        except Exception as e:  # a broken local install must not stop the report
            self.reason = f"LPIPS could not be built: {type(e).__name__}: {e}"

    @property
    def available(self) -> bool:
        return self.metric is not None

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, reference: np.ndarray) -> float:
        values = []
        for a, b in zip(_frames(frames), _frames(reference)):
            values.append(float(self.metric(a[None].to(self.device), b[None].to(self.device))))
            self.metric.reset()
        return float(np.mean(values))


def finite_or_inf(value: float) -> float | str:
    """A JSON-safe metric value: "inf" for an infinite PSNR."""
    return "inf" if math.isinf(value) else float(value)


def from_json(value: float | str) -> float:
    """The metric value that `finite_or_inf` stored."""
    return math.inf if value == "inf" else value
