"""Procedural demo clips: captions, rendering range, determinism, motion and colour."""

import torch

from dit_sparse.demo import SHEET_PROMPTS, STUDY_PROMPTS, VOCABULARY, ClipSpec, caption, render_clips, sample_spec
from dit_sparse.demo.clips import COLOURS


def spec(**fields):
    base = dict(shape="circle", colour="red", motion="moving left", background="plain", background_colour="blue",
                x=0.3, y=0.0, size=0.25, speed=0.8)
    return ClipSpec(**{**base, **fields})


def shape_mask(clip, colour):
    """(F, H, W) pixels within a small distance of the named colour; clip (3, F, H, W) in [-1, 1]."""
    target = torch.tensor(COLOURS[colour]).view(3, 1, 1, 1) * 2 - 1
    return (clip - target).abs().amax(0) < 0.05


def centroid(mask):
    """(F, 2) mean (x, y) pixel of each frame's mask."""
    ys, xs = torch.meshgrid(torch.arange(mask.shape[1]), torch.arange(mask.shape[2]), indexing="ij")
    count = mask.sum((1, 2)).float()
    return torch.stack([(mask * xs).sum((1, 2)) / count, (mask * ys).sum((1, 2)) / count], dim=1)


def test_captions_use_only_vocabulary_words_and_cover_it():
    generator = torch.Generator().manual_seed(0)
    specs = [sample_spec(generator) for _ in range(500)]
    words = {w for s in specs for w in caption(s).split()}
    assert words <= set(VOCABULARY)
    assert words == set(VOCABULARY)  # every vocabulary word is reachable
    assert all(set(p.split()) <= set(VOCABULARY) for p in STUDY_PROMPTS + SHEET_PROMPTS)
    assert len(STUDY_PROMPTS) == 8 and len(SHEET_PROMPTS) == 6
    assert all(s.colour != s.background_colour for s in specs)


def test_caption_wording():
    assert caption(spec()) == "a red circle moving left on a blue background"
    assert caption(spec(shape="triangle", colour="yellow", motion="rotating", background="striped",
                        background_colour="green")) == "a yellow triangle rotating on a striped green background"
    assert caption(spec(colour="orange", background="gradient", background_colour="orange")).startswith("an orange")
    assert caption(spec(background_colour="orange")).endswith("on an orange background")


def test_render_shape_range_and_determinism():
    generator = torch.Generator().manual_seed(1)
    specs = [sample_spec(generator) for _ in range(4)]
    clips = render_clips(specs, num_frames=9, height=48, width=64)
    assert clips.shape == (4, 3, 9, 48, 64) and clips.dtype == torch.float32
    assert clips.min() >= -1 and clips.max() <= 1
    assert torch.equal(clips, render_clips(specs, num_frames=9, height=48, width=64))
    other = render_clips([sample_spec(generator) for _ in range(4)], num_frames=9, height=48, width=64)
    assert not torch.equal(clips, other)
    assert not torch.equal(clips[:, :, 0], clips[:, :, -1])  # something moves


def test_sampled_shapes_stay_in_frame():
    generator = torch.Generator().manual_seed(2)
    specs = [sample_spec(generator) for _ in range(40)]
    clips = render_clips(specs, num_frames=9, height=64, width=64)
    for s, clip in zip(specs, clips):
        mask = shape_mask(clip, s.colour)
        border = torch.cat([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], dim=1)
        assert mask.flatten(1).sum(1).min() > 20, caption(s)
        assert not border.any(), caption(s)


def test_motion_direction_is_visible():
    moves = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
    for motion, (dx, dy) in moves.items():
        start = {"moving left": (0.4, 0.0), "moving right": (-0.4, 0.0), "moving up": (0.0, 0.4), "moving down": (0.0, -0.4)}[motion]
        clip = render_clips([spec(motion=motion, x=start[0], y=start[1])], num_frames=9, height=64, width=64)[0]
        path = centroid(shape_mask(clip, "red"))
        step = path[1:] - path[:-1]
        assert (step[:, 0] * dx > 0.5).all() if dx else (step[:, 0].abs() < 0.1).all(), motion
        assert (step[:, 1] * dy > 0.5).all() if dy else (step[:, 1].abs() < 0.1).all(), motion
    bounce = centroid(shape_mask(render_clips([spec(motion="bouncing", y=0.7, speed=1.2, bounces=1.0)], 17, 64, 64)[0], "red"))
    assert bounce[8, 1] < bounce[0, 1] - 15 and abs(bounce[16, 1] - bounce[0, 1]) < 1 and (bounce[:, 0] - bounce[0, 0]).abs().max() < 0.5
    area = shape_mask(render_clips([spec(motion="growing", size=0.15, growth=2.0)], 9, 64, 64)[0], "red").sum((1, 2))
    assert (area[1:] > area[:-1]).all() and area[-1] > 3 * area[0]
    area = shape_mask(render_clips([spec(motion="shrinking", size=0.15, growth=2.0)], 9, 64, 64)[0], "red").sum((1, 2))
    assert (area[1:] < area[:-1]).all()
    spin = shape_mask(render_clips([spec(shape="star", motion="rotating", spin=1.0, x=0.0)], 9, 64, 64)[0], "red")
    assert (spin[0] != spin[4]).sum() > 20 and abs(int(spin[0].sum()) - int(spin[4].sum())) < 15


def test_named_colours_are_the_rendered_colours():
    for shape in ("circle", "square", "triangle", "diamond", "star"):
        for colour, background in (("red", "blue"), ("yellow", "black"), ("green", "white")):
            s = spec(shape=shape, colour=colour, background_colour=background, motion="rotating", x=0.0, size=0.4)
            clip = render_clips([s], num_frames=1, height=64, width=64)[0, :, 0]
            expected = torch.tensor(COLOURS[colour]) * 2 - 1
            torch.testing.assert_close(clip[:, 32, 32], expected)  # the centre is the shape
            torch.testing.assert_close(clip[:, 1, 1], torch.tensor(COLOURS[background]) * 2 - 1)  # a corner is plain background
    for kind in ("gradient", "striped", "checkered"):
        clip = render_clips([spec(background=kind, size=0.1)], num_frames=1, height=64, width=64)[0, :, 0].flatten(1)
        blue = torch.tensor(COLOURS["blue"]).view(3, 1) * 2 - 1
        background = clip[:, ~shape_mask(clip.view(3, 1, 64, 64), "red").flatten()]
        assert ((background - blue).abs().amax(0) < 0.15).float().mean() > 0.1, kind  # the named colour...
        assert ((background - blue).abs().amax(0) > 0.3).float().mean() > 0.1, kind  # ...and a second shade
