"""Quality metrics, side-by-side frames and report plots on hand-made inputs."""

import math
import sys
import types

import numpy as np
import pytest
import torch

from dit_sparse import quality, report_plots
from dit_sparse.media import save_frames, side_by_side


def test_psnr_ssim_known_values():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 0.8, size=(3, 16, 16, 3)).astype(np.float32)
    assert math.isinf(quality.psnr(ref, ref)) and quality.ssim(ref, ref) == pytest.approx(1.0)
    noisy = ref.copy()
    noisy[0] += 0.1  # frame 0: MSE 0.01 -> 20 dB; frames 1, 2 unchanged -> inf, so the mean is inf
    assert math.isinf(quality.psnr(noisy, ref))
    noisy = ref + 0.1
    assert quality.psnr(noisy, ref) == pytest.approx(20.0, abs=1e-3)
    assert quality.ssim(noisy, ref) < 1.0
    assert quality.finite_or_inf(math.inf) == "inf" and quality.finite_or_inf(3.0) == 3.0


def test_lpips_reports_why_it_is_unavailable():
    metric = quality.LPIPS()
    assert metric.available or metric.reason


def test_lpips_without_torchvision_names_both_needs(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    metric = quality.LPIPS()
    assert not metric.available
    assert "torchvision is not installed" in metric.reason
    assert str(tmp_path / "checkpoints" / quality.ALEXNET_WEIGHTS) in metric.reason and "nothing is downloaded" in metric.reason


def test_lpips_without_weights_says_where_they_belong(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    metric = quality.LPIPS()
    assert not metric.available
    assert "AlexNet weights are not on this machine" in metric.reason
    assert str(tmp_path / "checkpoints" / quality.ALEXNET_WEIGHTS) in metric.reason


def test_side_by_side_layout():
    a = np.zeros((4, 8, 10, 3), np.float32)
    b = np.ones((5, 6, 12, 3), np.float32)
    out = side_by_side([("dense", a), ("fast", b)], label_height=12, multiple=1)
    assert out.shape == (4, 8 + 12, 10 + 4 + 12, 3)
    assert out[0, 12:, :10].max() == 0 and out[0, 12:18, 14:].min() == 1  # bodies under their labels
    assert out[0, :12, :10].max() > 0  # the label text is drawn


def test_side_by_side_is_a_multiple_of_16_and_written_without_resizing(tmp_path, caplog):
    video = np.full((3, 256, 256, 3), 0.5, np.float32)
    out = side_by_side([("dense", video), ("balanced", video), ("fast", video)])
    assert out.shape == (3, 288, 784, 3)  # 256 + a 32-row label strip; 3 x 256 + 2 gaps of 4 + a 8-column margin
    assert out[0, 32:, :256].min() == 0.5 and out[0, :, 776:].max() == 0  # bodies under the labels, black margin
    save_frames(out, tmp_path / "side.mp4")
    assert "resizing" not in caplog.text  # imageio_ffmpeg warns when it has to resize a frame


def test_save_frames_rejects_multi_frame_png(tmp_path):
    with pytest.raises(ValueError, match="one image"):
        save_frames(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.png")


STATS = {
    "layer_indices": {"transformer": [0, 1, 2]},
    "layers": {
        "transformer.1": {"cond": {"kinds": [["spatial", "temporal"]], "mean_density": 0.25},
                          "uncond": {"kinds": [["dense", "spatial"]], "mean_density": 0.75}},
        "transformer.2": {"cond": {"kinds": [["temporal", "temporal"]], "mean_density": 0.5}},
    },
}


def test_kind_maps_and_density_per_layer():
    maps = report_plots.kind_maps(STATS)
    layer0 = report_plots.KINDS.index("dense layer")
    s, t, d = (report_plots.KINDS.index(k) for k in ("spatial", "temporal", "dense"))
    assert maps["transformer / cond"].tolist() == [[layer0, layer0], [s, t], [t, t]]
    assert maps["transformer / uncond"].tolist() == [[layer0, layer0], [d, s], [layer0, layer0]]
    assert report_plots.density_per_layer(STATS) == {"transformer": [1.0, 0.5, 0.5]}


def test_plots_write_png(tmp_path):
    paths = [
        report_plots.plot_head_kinds(STATS, tmp_path / "kinds.png", "kinds"),
        report_plots.plot_density_per_layer({"fast": STATS}, tmp_path / "density.png"),
        report_plots.plot_speed_vs_psnr({"dense": dict(psnr="inf", speedup=1.0), "fast": dict(psnr=31.0, speedup=1.8)},
                                        tmp_path / "speed.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
