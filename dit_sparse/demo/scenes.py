"""Richer procedural training scenes: several objects over textured backgrounds, seen by a moving camera.

A scene has one prompted main object (shape, colour and motion from `clips`' vocabulary), one to
three distractors of other shapes and colours with motions of their own, a background of
`clips`' kinds with an optional uncaptioned texture (value noise or tiles) and a camera that pans
and zooms over all of it. Distractors are drawn behind or in front of the main object, so they
pass behind it or briefly in front of it. The caption describes the main object and the
background in `clips`' grammar, so the demo tokenizer's vocabulary stays as it is; the main
object's motion is relative to the background (the world), like a caption's "moving left on a
striped background". The point is to give attention heads reasons to become spatial (several
objects, textures) or temporal (camera motion, occlusion), which single-shape clips do not.

Geometry is `clips`' in world units; the camera maps world to screen as screen = (world - pan t)
zoom^t, t going from 0 to 1 over the clip. Rendering is batched torch and a pure function of the
specs (textures take their seed from the spec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from .clips import (
    _DIRECTIONS,
    _SDF,
    COLOURS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    _pick,
    _screen_grid,
    _shade,
    _square_wave,
    _trajectory,
    _uniform,
    caption,
    sample_spec,
)

TEXTURES = ("none", "noise", "tiles")
CAMERAS = ("static", "pan", "zoom", "pan and zoom")

MIN_MAIN_RADIUS = 0.12  # on screen, in half frame heights: 15 pixels at 256x256, 31 at 512x512
MIN_MAIN_TRAVEL = 0.3  # on-screen distance a "moving ..." main object covers in its direction
MIN_MAIN_GROWTH = 1.3  # on-screen size ratio of a "growing" or "shrinking" main object
FRONT_SIZE = (0.25, 0.45)  # radius of a distractor drawn in front, as a fraction of the main's smallest radius
_TIP = 1.3  # farthest reach of every shape, in radii (star and triangle tips reach 1.27)
_ATTEMPTS = 50


@dataclass(frozen=True)
class SceneObject:
    """One moving shape; the fields mean what `ClipSpec`'s do, in world units."""

    shape: str
    colour: str
    motion: str
    x: float = 0.0
    y: float = 0.0
    size: float = 0.25
    angle: float = 0.0
    speed: float = 0.8
    spin: float = 3.0
    bounces: float = 2.0
    growth: float = 1.8


@dataclass(frozen=True)
class SceneSpec:
    """Everything that decides one scene; `render_scenes` is a pure function of these fields.

    `distractors[:behind]` are drawn before the main object (it hides them), the rest after it (they
    pass in front of it). `texture` darkens the background towards its shade in a pattern that is
    not captioned; `pan_x`, `pan_y` are the camera's travel over the clip and `zoom` its
    magnification at the last frame relative to the first (above 1: zooming in).
    """

    main: SceneObject
    background: str
    background_colour: str
    distractors: tuple[SceneObject, ...] = ()
    behind: int = 0
    background_angle: float = 0.0
    background_period: float = 0.4
    background_phase: float = 0.0
    texture: str = "none"
    texture_period: float = 0.3
    texture_strength: float = 0.4
    texture_seed: int = 0
    pan_x: float = 0.0
    pan_y: float = 0.0
    zoom: float = 1.0

    @property
    def layers(self) -> tuple[SceneObject, ...]:
        """The objects in drawing order, back to front."""
        return self.distractors[: self.behind] + (self.main,) + self.distractors[self.behind :]


def caption_scene(spec: SceneSpec) -> str:
    """The main object and the background in `clips`' grammar: "a red circle moving left on a striped blue background"."""
    main = spec.main
    return caption(ClipSpec(shape=main.shape, colour=main.colour, motion=main.motion, background=spec.background,
                            background_colour=spec.background_colour))


def main_on_screen(spec: SceneSpec, samples: int = 33):
    """Screen centre x, y and radius of the main object at `samples` times over the clip, each (samples,)."""
    t = torch.linspace(0, 1, samples)[None]
    x, y, size, _ = _trajectory([spec.main], t)
    magnification = spec.zoom**t
    return ((x - spec.pan_x * t) * magnification)[0], ((y - spec.pan_y * t) * magnification)[0], (size * magnification)[0]


def _main_reads_as_captioned(spec: SceneSpec) -> bool:
    """The main object stays wholly inside a square frame, large enough, and its captioned motion shows on screen."""
    x, y, radius = main_on_screen(spec)
    reach = _TIP * radius
    if (x.abs() + reach > 1).any() or (y.abs() + reach > 1).any() or radius.min() < MIN_MAIN_RADIUS:
        return False
    motion = spec.main.motion
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        return float(dx * (x[-1] - x[0]) + dy * (y[-1] - y[0])) >= MIN_MAIN_TRAVEL
    if motion == "growing":
        return float(radius[-1] / radius[0]) >= MIN_MAIN_GROWTH
    if motion == "shrinking":
        return float(radius[0] / radius[-1]) >= MIN_MAIN_GROWTH
    return True


def _sample_camera(generator: torch.Generator) -> dict:
    kind = _pick(CAMERAS, generator)
    camera = {"pan_x": 0.0, "pan_y": 0.0, "zoom": 1.0}
    if "pan" in kind:
        direction, distance = _uniform(0.0, 2 * math.pi, generator), _uniform(0.15, 0.5, generator)
        camera.update(pan_x=distance * math.cos(direction), pan_y=distance * math.sin(direction))
    if "zoom" in kind:
        ratio = _uniform(1.2, 1.6, generator)
        camera["zoom"] = ratio if float(torch.rand((), generator=generator)) < 0.5 else 1 / ratio
    return camera


def _sample_distractor(spec: SceneSpec, in_front: bool, generator: torch.Generator) -> SceneObject:
    """A shape of another kind and colour than the main object's; most cross the main object's path."""
    main = spec.main
    shape = _pick(tuple(s for s in SHAPES if s != main.shape), generator)
    colour = _pick(tuple(c for c in COLOURS if c not in (main.colour, spec.background_colour)), generator)
    motion = _pick(tuple(m for m in MOTIONS if not (shape == "circle" and m == "rotating")), generator)
    growth = _uniform(1.3, 1.8, generator) if motion in ("growing", "shrinking") else 1.0
    if in_front:  # main.size is the main object's smallest radius, whatever its motion
        size = _uniform(*FRONT_SIZE, generator) * main.size / growth
    else:
        size = _uniform(0.12, 0.3, generator)
    speed, bounces = _uniform(0.5, 1.5, generator), _uniform(1.0, 3.0, generator)
    if float(torch.rand((), generator=generator)) < 0.6:  # pass where the main object is at time `when`
        when = _uniform(0.25, 0.75, generator)
        mx, my, _, _ = _trajectory([main], torch.tensor([[when]]))
        x, y = float(mx), float(my)
        if motion in _DIRECTIONS:
            dx, dy = _DIRECTIONS[motion]
            x, y = x - dx * speed * when, y - dy * speed * when
        elif motion == "bouncing":
            y = y + speed * abs(math.sin(math.pi * bounces * when))
    else:
        x, y = _uniform(-1.2, 1.2, generator), _uniform(-1.2, 1.2, generator)
    return SceneObject(
        shape=shape, colour=colour, motion=motion, x=x, y=y, size=size, angle=_uniform(0.0, 2 * math.pi, generator),
        speed=speed, spin=_uniform(-4.5, 4.5, generator), bounces=bounces, growth=growth,
    )


def sample_scene(generator: torch.Generator) -> SceneSpec:
    """One random scene whose main object reads as its caption says for the whole clip.

    The main object (radius 0.14-0.3 as in `clips`, at least MIN_MAIN_RADIUS on screen) stays
    wholly inside a square frame under the camera's motion, and its captioned motion shows on
    screen; scenes are drawn until one passes (after _ATTEMPTS the camera stays still, which
    always passes). Distractors in front of it are at most FRONT_SIZE[1] of its smallest radius,
    so they hide part of it at times but never all of it.
    """
    for attempt in range(_ATTEMPTS + 1):
        clip = sample_spec(generator)
        camera = _sample_camera(generator) if attempt < _ATTEMPTS else {}
        main = SceneObject(**{f.name: getattr(clip, f.name) for f in fields(SceneObject)})
        spec = SceneSpec(
            main=main, background=clip.background, background_colour=clip.background_colour,
            background_angle=clip.background_angle, background_period=clip.background_period,
            background_phase=clip.background_phase, **camera,
        )
        if _main_reads_as_captioned(spec):
            break
    count = 1 + int(torch.randint(3, (1,), generator=generator))
    behind = int(torch.randint(count + 1, (1,), generator=generator))
    distractors = tuple(_sample_distractor(spec, i >= behind, generator) for i in range(count))
    texture = _pick(TEXTURES, generator)
    return replace(
        spec, distractors=distractors, behind=behind, texture=texture,
        texture_period=_uniform(0.15, 0.35, generator), texture_strength=_uniform(0.25, 0.5, generator),
        texture_seed=int(torch.randint(2**20, (1,), generator=generator)),
    )


def sample_scenes(n: int, generator: torch.Generator) -> list[SceneSpec]:
    return [sample_scene(generator) for _ in range(n)]


def _hash(ix: torch.Tensor, iy: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """A value in [0, 1) per integer lattice point (int64 mixing, the same on every device)."""
    h = ix * 0x27D4EB2D + iy * 0x165667B1 + seed * 0x9E3779B1
    h = (h ^ (h >> 15)) * 0x2C1B3C6D
    h = (h ^ (h >> 12)) * 0x297A2D39
    h = h ^ (h >> 15)
    return (h & 0xFFFFFF).float() / 0x1000000


def _value_noise(u: torch.Tensor, v: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Smooth noise in [0, 1] with one feature per unit: lattice values blended with smoothstep."""
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    iu, iv = u0.long(), v0.long()
    top = torch.lerp(_hash(iu, iv, seed), _hash(iu + 1, iv, seed), fu)
    bottom = torch.lerp(_hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed), fu)
    return torch.lerp(top, bottom, fv)


def _tiles(u: torch.Tensor, v: torch.Tensor, seed: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Unit tiles of random shade in [0, 0.7], with grout lines (1) over their edges, anti-aliased over one pixel."""
    u0, v0 = u.floor(), v.floor()
    edge = torch.minimum(torch.minimum(u - u0, 1 - (u - u0)), torch.minimum(v - v0, 1 - (v - v0)))
    grout = (0.5 - (edge - 0.05) / pixel).clamp(0, 1)
    return 0.7 * _hash(u0.long(), v0.long(), seed) * (1 - grout) + grout


def _backgrounds(specs: list[SceneSpec], wx, wy, pixel, aspect: float) -> torch.Tensor:
    """(B, 3, F, H, W) backgrounds at world coordinates wx (B, F, 1, W), wy (B, F, H, 1); pixel (B, F, 1, 1) is world units."""
    dev = wx.device

    def field(name, dtype=torch.float32):
        return torch.tensor([getattr(s, name) for s in specs], dtype=dtype, device=dev).view(-1, 1, 1, 1)

    def kind_is(name, attribute):
        return torch.tensor([getattr(s, attribute) == name for s in specs], device=dev).view(-1, 1, 1, 1)

    angle, period, phase = field("background_angle"), field("background_period"), field("background_phase")
    u = wx * torch.cos(angle) + wy * torch.sin(angle)
    v = -wx * torch.sin(angle) + wy * torch.cos(angle)
    extent = aspect * torch.cos(angle).abs() + torch.sin(angle).abs()
    stripes_u = _square_wave(u + phase * period, period, pixel)
    stripes_v = _square_wave(v + phase * period, period, pixel)
    weight = torch.where(kind_is("gradient", "background"), (0.5 + 0.5 * u / extent).clamp(0, 1), 0.0)
    weight = torch.where(kind_is("striped", "background"), stripes_u, weight)
    weight = torch.where(kind_is("checkered", "background"), stripes_u + stripes_v - 2 * stripes_u * stripes_v, weight)
    scale, seed = field("texture_period"), field("texture_seed", torch.int64)
    noise = 0.65 * _value_noise(u / scale, v / scale, seed) + 0.35 * _value_noise(2 * u / scale + 17.0, 2 * v / scale, seed)
    tiles = _tiles(u / scale, v / scale, seed, pixel / scale)
    texture = torch.where(kind_is("noise", "texture"), noise, torch.where(kind_is("tiles", "texture"), tiles, 0.0))
    weight = weight + (1 - weight) * field("texture_strength") * texture
    colour = torch.tensor([COLOURS[s.background_colour] for s in specs], device=dev)
    first, second = colour[:, :, None, None, None], _shade(colour)[:, :, None, None, None]
    return first + (second - first) * weight[:, None]


def _coverage(objects: list[SceneObject], t, wx, wy, pixel) -> torch.Tensor:
    """(N, F, H, W) fraction of each pixel that each object covers, anti-aliased over one pixel."""
    cx, cy, size, angle = _trajectory(objects, t[None])
    cover = torch.empty(len(objects), t.numel(), wy.shape[2], wx.shape[3], device=t.device)
    for shape, sdf in _SDF.items():
        idx = torch.tensor([i for i, o in enumerate(objects) if o.shape == shape], dtype=torch.long, device=t.device)
        if not len(idx):
            continue
        r = size[idx][..., None, None]
        dx, dy = wx[idx] - cx[idx][..., None, None], wy[idx] - cy[idx][..., None, None]
        cos, sin = torch.cos(angle[idx])[..., None, None], torch.sin(angle[idx])[..., None, None]
        distance = sdf((cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r) * r
        cover[idx] = (0.5 - distance / pixel[idx]).clamp(0, 1)
    return cover


def render_scenes(
    specs: list[SceneSpec], num_frames: int = 33, height: int = 256, width: int = 256, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, 3, F, H, W) float32 scenes in [-1, 1], like `render_clips`; a pure function of the specs."""
    device = torch.device(device)
    pixel, ys, xs, t = _screen_grid(num_frames, height, width, device)

    def field(name):
        return torch.tensor([getattr(s, name) for s in specs], dtype=torch.float32, device=device)[:, None]

    magnification = (field("zoom") ** t)[..., None, None]  # (B, F, 1, 1)
    wx = (field("pan_x") * t)[..., None, None] + xs / magnification
    wy = (field("pan_y") * t)[..., None, None] + ys / magnification
    world_pixel = pixel / magnification
    scenes = _backgrounds(specs, wx, wy, world_pixel, width / height)
    for depth in range(max(len(s.layers) for s in specs)):
        rows = [i for i, s in enumerate(specs) if len(s.layers) > depth]
        objects = [specs[i].layers[depth] for i in rows]
        idx = torch.tensor(rows, dtype=torch.long, device=device)
        cover = _coverage(objects, t, wx[idx], wy[idx], world_pixel[idx])
        colour = torch.tensor([COLOURS[o.colour] for o in objects], device=device)[:, :, None, None, None]
        scenes[idx] = scenes[idx] + (colour - scenes[idx]) * cover[:, None]
    return scenes * 2 - 1
