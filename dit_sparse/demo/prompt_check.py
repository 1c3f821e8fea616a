"""Does a clip follow its prompt? A check computed from the procedural generator's own vocabulary
(clips.py), with no learned model: the prompted object must be visible in its colour in most
frames, and its centroid (or its area) must move as the prompt says.

- Colour: a pixel is "near" a colour when its RGB distance to it is at most `COLOUR_TOLERANCE`;
  the background counts its colour and, for patterned backgrounds, the darker shade the renderer
  mixes in.
- Visible: at least `MIN_OBJECT_SHARE` of a frame's pixels are near the object's colour, in at
  least `MIN_VISIBLE_FRAMES` of the frames.
- Motion, from the centroid of the object-coloured pixels over the visible frames (image units:
  the frame's height is 1): "moving left/right/up/down" travels at least `MIN_TRAVEL` that way and
  more than it drifts across; "bouncing" rises at least `MIN_TRAVEL` above where it starts and
  comes back down; "growing"/"shrinking" changes its pixel count by `MIN_GROWTH` or more that way;
  "rotating" stays within `MIN_TRAVEL` of where it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clips import _DIRECTIONS, BACKGROUNDS, COLOURS, MOTIONS, SHAPES

COLOUR_TOLERANCE = 0.2
MIN_OBJECT_SHARE = 0.003
MIN_VISIBLE_FRAMES = 0.8
MIN_TRAVEL = 0.1
MIN_GROWTH = 1.3


@dataclass(frozen=True)
class PromptParts:
    """What a prompt of the generator's grammar asks for (`clips.caption`'s inverse)."""

    colour: str
    shape: str
    motion: str
    background: str
    background_colour: str


def parse_prompt(prompt: str) -> PromptParts:
    """"a red circle moving left on a striped blue background" -> its parts; ValueError for a
    prompt outside the grammar."""
    words = prompt.lower().split()
    try:
        on = words.index("on")
        colour, shape, motion = words[1], words[2], " ".join(words[3:on])
        rest = words[on + 2:-1]  # after "on a(n)", before "background"
        background, background_colour = (rest[0], rest[1]) if len(rest) == 2 else ("plain", rest[0])
    except (ValueError, IndexError):
        raise ValueError(f"{prompt!r} is not a prompt of the demo grammar "
                         "('a <colour> <shape> <motion> on a [<pattern>] <colour> background')") from None
    parts = PromptParts(colour, shape, motion, background, background_colour)
    if (colour not in COLOURS or background_colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS
            or background not in BACKGROUNDS or words[-1] != "background"):
        raise ValueError(f"{prompt!r} uses words outside the demo vocabulary: parsed as {parts}")
    return parts


def near(frames: np.ndarray, rgb) -> np.ndarray:
    """(F, H, W) bool: pixels of (F, H, W, 3) frames in [0, 1] within COLOUR_TOLERANCE of `rgb`."""
    return np.linalg.norm(frames - np.asarray(rgb, dtype=np.float32), axis=-1) <= COLOUR_TOLERANCE


def _shade(rgb) -> np.ndarray:
    """The darker second colour of patterned backgrounds (as clips._shade)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return np.full(3, 0.35, np.float32) if rgb.max() < 0.2 else 0.45 * rgb


def check_clip(frames: np.ndarray, prompt: str) -> dict:
    """The check of one clip: (F, H, W, 3) frames in [0, 1] against its prompt."""
    parts = parse_prompt(prompt)
    F, H, W, _ = frames.shape
    obj = near(frames, COLOURS[parts.colour])
    background = near(frames, COLOURS[parts.background_colour])
    if parts.background != "plain":
        background |= near(frames, _shade(COLOURS[parts.background_colour]))
    share = obj.reshape(F, -1).mean(1)
    visible = share >= MIN_OBJECT_SHARE
    ys, xs = (np.arange(H, dtype=np.float32) + 0.5) / H, (np.arange(W, dtype=np.float32) + 0.5) / H
    counts = obj.reshape(F, -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (obj * xs[None, None, :]).reshape(F, -1).sum(1) / counts
        cy = (obj * ys[None, :, None]).reshape(F, -1).sum(1) / counts
    track = np.stack([cx, cy], 1)[visible]
    seen = bool(visible.mean() >= MIN_VISIBLE_FRAMES)
    moves, travel = _motion(parts.motion, track, counts[visible].astype(np.float64)) if len(track) >= 2 else (False, 0.0)
    return dict(prompt=prompt, object_share=float(share.mean()), background_share=float(background.mean()),
                visible_frames=float(visible.mean()), travel=travel, visible=seen, moves=bool(moves),
                follows=bool(seen and moves))


def _motion(motion: str, track: np.ndarray, counts: np.ndarray) -> tuple[bool, float]:
    """Whether the centroid track (and pixel counts) over the visible frames move as `motion`
    says, and the measured amount (travel in image heights, or the growth ratio)."""
    start, end = track[0], track[-1]
    if motion in _DIRECTIONS:
        direction = np.asarray(_DIRECTIONS[motion], dtype=np.float32)
        along = float((end - start) @ direction)
        across = float(abs((end - start) @ direction[::-1]))
        return along >= MIN_TRAVEL and along > across, along
    if motion == "bouncing":
        rise = float(start[1] - track[:, 1].min())  # y grows downwards
        back = float((track[:, 1] - np.minimum.accumulate(track[:, 1])).max())  # falls again after a rise
        return rise >= MIN_TRAVEL and back >= MIN_TRAVEL / 2, rise
    if motion in ("growing", "shrinking"):
        head, tail = counts[: max(1, len(counts) // 4)].mean(), counts[-max(1, len(counts) // 4):].mean()
        ratio = float(tail / max(head, 1.0)) if motion == "growing" else float(head / max(tail, 1.0))
        return ratio >= MIN_GROWTH, ratio
    drift = float(np.linalg.norm(track - start, axis=1).max())  # rotating: stays in place
    return drift <= MIN_TRAVEL, drift


def summarise(checks: list[dict]) -> dict:
    """Shares over clips: visible, moving as asked, following the prompt; mean colour shares."""
    def mean(key):
        return float(np.mean([c[key] for c in checks])) if checks else float("nan")

    return dict(clips=len(checks), visible=mean("visible"), moves=mean("moves"), follows=mean("follows"),
                object_share=mean("object_share"), background_share=mean("background_share"))
