"""Procedural training clips: one coloured shape moving over a coloured background.

Clips are rendered on the fly in torch (batched, on any device) from a `ClipSpec`, so the demo
model trains on an endless, exactly captioned data set without any download. Geometry is in
normalised units: y runs from -1 (top) to 1 (bottom), x from -W/H to W/H; shapes are drawn from
signed distance functions with edges anti-aliased over one pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (1.00, 0.90, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.10, 0.30, 0.95),
    "purple": (0.60, 0.20, 0.80),
    "white": (1.00, 1.00, 1.00),
    "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "bouncing", "rotating", "growing", "shrinking")
BACKGROUNDS = ("plain", "gradient", "striped", "checkered")

# Direction of travel (x, y) per motion; y grows downwards.
_DIRECTIONS = {"moving left": (-1.0, 0.0), "moving right": (1.0, 0.0), "moving up": (0.0, -1.0), "moving down": (0.0, 1.0)}

VOCABULARY = tuple(sorted(
    {"a", "an", "on", "background"}
    | set(COLOURS)
    | set(SHAPES)
    | {word for motion in MOTIONS for word in motion.split()}
    | set(BACKGROUNDS) - {"plain"}
))

STUDY_PROMPTS = (
    "a red circle moving left on a blue background",
    "a yellow triangle rotating on a striped green background",
    "a white square bouncing on a gradient purple background",
    "a green star moving up on a checkered black background",
    "a blue diamond moving right on a gradient orange background",
    "an orange circle growing on a striped blue background",
    "a purple square moving down on a white background",
    "a black triangle shrinking on a checkered yellow background",
)

SHEET_PROMPTS = (
    "a red circle moving right on a blue background",
    "a yellow star rotating on a striped purple background",
    "a white square bouncing on a gradient green background",
    "a blue triangle moving up on a checkered orange background",
    "a green diamond growing on a black background",
    "an orange circle moving left on a striped white background",
)


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip; `render_clips` is a pure function of these fields."""

    shape: str
    colour: str
    motion: str
    background: str
    background_colour: str
    x: float = 0.0  # centre at the first frame
    y: float = 0.0
    size: float = 0.25  # radius of the shape at the first frame
    angle: float = 0.0  # orientation at the first frame, radians
    speed: float = 0.8  # distance travelled over the clip ("moving ..."), or height of the bounces
    spin: float = 3.0  # signed rotation over the clip, radians ("rotating")
    bounces: float = 2.0  # number of bounces over the clip ("bouncing")
    growth: float = 1.8  # ratio of the largest to the smallest size ("growing", "shrinking")
    background_angle: float = 0.0  # direction of the gradient, stripes or checks, radians
    background_period: float = 0.4  # stripe or check period
    background_phase: float = 0.0  # offset of the stripes or checks, in periods


def _pick(options, generator):
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _uniform(low, high, generator):
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_spec(generator: torch.Generator) -> ClipSpec:
    """One random clip whose shape stays inside a square frame for the whole clip."""
    shape = _pick(SHAPES, generator)
    motions = tuple(m for m in MOTIONS if not (shape == "circle" and m == "rotating"))
    motion = _pick(motions, generator)
    colour = _pick(tuple(COLOURS), generator)
    background_colour = _pick(tuple(c for c in COLOURS if c != colour), generator)
    background = _pick(BACKGROUNDS, generator)
    size = _uniform(0.2, 0.3, generator)
    speed = _uniform(0.6, 1.1, generator)
    growth = _uniform(1.5, 2.2, generator)
    if motion in ("growing", "shrinking"):
        size = _uniform(0.14, 0.22, generator)
    largest = size * (growth if motion in ("growing", "shrinking") else 1.0)
    free = 1.0 - 1.3 * largest  # how far the centre may go; star and triangle tips reach 1.27 radii
    x, y = _uniform(-free, free, generator), _uniform(-free, free, generator)
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        along = _uniform(-free, free - speed, generator)  # start so that start + speed stays inside
        if dx:
            x = -along if dx < 0 else along
        else:
            y = -along if dy < 0 else along
    if motion == "bouncing":
        y = free  # the floor; the shape rises from it
        speed = _uniform(1.0, 2.0, generator) * free
    return ClipSpec(
        shape=shape, colour=colour, motion=motion, background=background, background_colour=background_colour,
        x=x, y=y, size=size, angle=_uniform(0.0, 2 * math.pi, generator), speed=speed,
        spin=_uniform(1.5, 4.5, generator) * (1 if float(torch.rand((), generator=generator)) < 0.5 else -1),
        bounces=_uniform(1.0, 3.0, generator), growth=growth,
        background_angle=_uniform(0.0, 2 * math.pi, generator), background_period=_uniform(0.4, 0.8, generator),
        background_phase=_uniform(0.0, 1.0, generator),
    )


def sample_specs(n: int, generator: torch.Generator) -> list[ClipSpec]:
    return [sample_spec(generator) for _ in range(n)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: ClipSpec) -> str:
    """E.g. "a red circle moving left on a blue background", "a white square bouncing on a gradient purple background"."""
    background = spec.background_colour if spec.background == "plain" else f"{spec.background} {spec.background_colour}"
    return f"{_article(spec.colour)} {spec.colour} {spec.shape} {spec.motion} on {_article(background)} {background} background"


def _shade(rgb: torch.Tensor) -> torch.Tensor:
    """The second colour of a patterned background: a darker shade, or dark grey for black."""
    dark = rgb.amax(-1, keepdim=True) < 0.2
    return torch.where(dark, torch.full_like(rgb, 0.35), 0.45 * rgb)


def _square_wave(u: torch.Tensor, period: torch.Tensor, pixel: float) -> torch.Tensor:
    """0/1 bands of half a period each, with edges one pixel wide."""
    return (0.5 + torch.sin(2 * math.pi * u / period) * period / (2 * math.pi * pixel)).clamp(0, 1)


def _sd_circle(x, y):
    return torch.sqrt(x * x + y * y) - 1.0


def _sd_square(x, y, half=0.85):
    qx, qy = x.abs() - half, y.abs() - half
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _sd_diamond(x, y, radius=1.2):
    return (x.abs() + y.abs() - radius) / math.sqrt(2)


def _sd_triangle(x, y, half_side=1.1):
    """Equilateral triangle pointing up (Inigo Quilez's formula, y pointing up)."""
    k = math.sqrt(3.0)
    x, y = x.abs() - half_side, half_side / k - y
    fold = x + k * y > 0
    x, y = torch.where(fold, (x - k * y) / 2, x), torch.where(fold, (-k * x - y) / 2, y)
    x = x - x.clamp(-2 * half_side, 0)
    return -torch.sqrt(x * x + y * y) * torch.sign(y)


def _sd_star(x, y, radius=1.25, inner=0.5):
    """Five-pointed star (Inigo Quilez's sdStar5, y pointing up)."""
    y = -y
    k1x, k1y = 0.809016994375, -0.587785252292
    x = x.abs()
    for kx, ky in ((k1x, k1y), (-k1x, k1y)):
        dot = (kx * x + ky * y).clamp(min=0)
        x, y = x - 2 * dot * kx, y - 2 * dot * ky
    x = x.abs()
    y = y - radius
    bax, bay = inner * -k1y, inner * k1x - 1.0
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0, radius)
    px, py = x - bax * h, y - bay * h
    return torch.sqrt(px * px + py * py) * torch.sign(y * bax - x * bay)


_SDF = {"circle": _sd_circle, "square": _sd_square, "diamond": _sd_diamond, "triangle": _sd_triangle, "star": _sd_star}


def _trajectory(specs: list[ClipSpec], t: torch.Tensor):
    """Centre, radius and angle per clip and frame, each (B, F)."""
    dev = t.device

    def field(name):
        return torch.tensor([getattr(s, name) for s in specs], dtype=torch.float32, device=dev)[:, None]

    def motion_is(*names):
        return torch.tensor([s.motion in names for s in specs], device=dev)[:, None]

    direction = torch.tensor([_DIRECTIONS.get(s.motion, (0.0, 0.0)) for s in specs], dtype=torch.float32, device=dev)
    x = field("x") + direction[:, :1] * field("speed") * t
    y = field("y") + direction[:, 1:] * field("speed") * t
    y = torch.where(motion_is("bouncing"), y - field("speed") * torch.sin(math.pi * field("bounces") * t).abs(), y)
    growth = field("growth")
    size = field("size") * torch.where(
        motion_is("growing"), 1 + (growth - 1) * t, torch.where(motion_is("shrinking"), growth - (growth - 1) * t, 1.0)
    )
    angle = field("angle") + torch.where(motion_is("rotating"), field("spin") * t, 0.0)
    return x, y, size, angle


def _backgrounds(specs, ys, xs, pixel):
    """(B, 3, H, W) static backgrounds."""
    dev = ys.device
    colour = torch.tensor([COLOURS[s.background_colour] for s in specs], device=dev)
    first, second = colour[:, :, None, None], _shade(colour)[:, :, None, None]
    angle = torch.tensor([s.background_angle for s in specs], device=dev)[:, None, None]
    period = torch.tensor([s.background_period for s in specs], device=dev)[:, None, None]
    phase = torch.tensor([s.background_phase for s in specs], device=dev)[:, None, None]
    u = xs * torch.cos(angle) + ys * torch.sin(angle)
    v = -xs * torch.sin(angle) + ys * torch.cos(angle)
    extent = xs.abs().max() * torch.cos(angle).abs() + ys.abs().max() * torch.sin(angle).abs()
    weight = {
        "plain": torch.zeros_like(u),
        "gradient": (0.5 + 0.5 * u / extent).clamp(0, 1),
        "striped": _square_wave(u + phase * period, period, pixel),
    }
    stripes_v = _square_wave(v + phase * period, period, pixel)
    weight["checkered"] = weight["striped"] + stripes_v - 2 * weight["striped"] * stripes_v
    kinds = [s.background for s in specs]
    w = torch.stack([weight[k][i] for i, k in enumerate(kinds)])[:, None]
    return first + (second - first) * w


def _screen_grid(num_frames: int, height: int, width: int, device: torch.device):
    """Pixel size, pixel-centre coordinates ys (H, 1) and xs (1, W) in normalised units, and each
    frame's time in [0, 1]."""
    pixel = 2.0 / height
    ys = ((torch.arange(height, device=device) + 0.5) * pixel - 1.0)[:, None]
    xs = ((torch.arange(width, device=device) + 0.5) * pixel - width / height)[None, :]
    t = torch.arange(num_frames, device=device, dtype=torch.float32) / max(num_frames - 1, 1)
    return pixel, ys, xs, t


def render_clips(
    specs: list[ClipSpec], num_frames: int = 33, height: int = 256, width: int = 256, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, 3, F, H, W) float32 clips in [-1, 1]; a pure function of the specs."""
    device = torch.device(device)
    pixel, ys, xs, t = _screen_grid(num_frames, height, width, device)
    cx, cy, size, angle = _trajectory(specs, t[None])
    cover = torch.empty(len(specs), num_frames, height, width, device=device)
    for shape, sdf in _SDF.items():
        idx = torch.tensor([i for i, s in enumerate(specs) if s.shape == shape], dtype=torch.long, device=device)
        if not len(idx):
            continue
        r = size[idx][..., None, None]
        dx, dy = xs - cx[idx][..., None, None], ys - cy[idx][..., None, None]
        cos, sin = torch.cos(angle[idx])[..., None, None], torch.sin(angle[idx])[..., None, None]
        distance = sdf((cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r) * r
        cover[idx] = (0.5 - distance / pixel).clamp(0, 1)
    background = _backgrounds(specs, ys, xs, pixel)[:, :, None]
    colour = torch.tensor([COLOURS[s.colour] for s in specs], device=device)[:, :, None, None, None]
    clips = background + (colour - background) * cover[:, None]
    return clips * 2 - 1
