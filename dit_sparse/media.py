"""Writing generated frames: MP4 / GIF / PNG by extension, and labelled side-by-side videos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def save_frames(frames: np.ndarray, path: Path, fps: int = 16) -> Path:
    """Write (F, H, W, 3) frames in [0, 1]: .mp4 (imageio-ffmpeg) or .gif for video, .png for
    an image (F = 1)."""
    from diffusers.utils import export_to_gif, export_to_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if (problem := writer_missing(path)) is not None:
        raise ValueError(problem)
    if suffix == ".mp4":
        export_to_video(list(frames), str(path), fps=fps)
    elif suffix == ".gif":
        export_to_gif([Image.fromarray(to_uint8(f)) for f in frames], str(path), fps=fps)
    elif suffix == ".png":
        if len(frames) != 1:
            raise ValueError(f"{path}: a PNG holds one image, got {len(frames)} frames")
        Image.fromarray(to_uint8(frames[0])).save(path)
    else:
        raise ValueError(f"{path}: unknown output type {suffix!r}; use .mp4, .gif or .png")
    return path


def writer_missing(path: Path) -> str | None:
    """Why `path` cannot be written here (MP4 goes through imageio-ffmpeg), or None."""
    if Path(path).suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        return f"{path}: writing MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); or write a .gif"
    return None


def video_suffix() -> tuple[str, str | None]:
    """The suffix for videos this machine can write (".mp4", else ".gif") and, for GIF, why."""
    problem = writer_missing(Path("video.mp4"))
    return (".mp4", None) if problem is None else (".gif", problem)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    return (np.clip(frame, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def side_by_side(videos: list[tuple[str, np.ndarray]], label_height: int = 20, multiple: int = 16) -> np.ndarray:
    """Frames of several equally long videos placed left to right, each under its label.

    The label strip grows and a black margin is added on the right until both sides are
    multiples of `multiple` (video encoders' macro block), so that no writer has to resize.
    """
    count = min(len(v) for _, v in videos)
    height = max(v.shape[1] for _, v in videos)
    label_height += -(height + label_height) % multiple
    font = ImageFont.load_default(size=max(10, min(label_height, 20) - 6))
    columns = []
    for label, video in videos:
        width = video.shape[2]
        strip = Image.new("RGB", (width, label_height), (0, 0, 0))
        ImageDraw.Draw(strip).text((4, 2), label, fill=(255, 255, 255), font=font)
        header = np.asarray(strip, dtype=np.float32) / 255.0
        body = np.zeros((count, height, width, 3), dtype=np.float32)
        body[:, : video.shape[1]] = video[:count]
        columns.append(np.concatenate([np.broadcast_to(header, (count, *header.shape)), body], axis=1))
    gap = np.ones((count, height + label_height, 4, 3), dtype=np.float32)
    out = [columns[0]]
    for col in columns[1:]:
        out += [gap, col]
    width = sum(part.shape[2] for part in out)
    out.append(np.zeros((count, height + label_height, -width % multiple, 3), dtype=np.float32))
    return np.concatenate(out, axis=2)
