"""Procedural demo scenes (issue 18): sampling, captions, rendering, camera, occlusion; demo2's size; resuming training."""

import importlib.util
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline

from dit_sparse.demo import SIZES, VOCABULARY, build_pipeline, build_tokenizer
from dit_sparse.demo.clips import COLOURS, _shade
from dit_sparse.demo.scenes import (
    FRONT_SIZE,
    MIN_MAIN_RADIUS,
    SceneObject,
    SceneSpec,
    caption_scene,
    main_on_screen,
    render_scenes,
    sample_scene,
    sample_scenes,
)

ROOT = Path(__file__).resolve().parents[1]


def scene(**fields):
    base = dict(main=SceneObject("circle", "red", "rotating", x=0.0, y=0.7, size=0.15), background="checkered",
                background_colour="blue", texture="noise", texture_strength=0.5, background_period=0.5)
    return SceneSpec(**{**base, **fields})


def near(clip, colour, tolerance=0.05):
    """(F, H, W) pixels within `tolerance` of the named colour; clip (3, F, H, W) in [-1, 1]."""
    target = torch.tensor(COLOURS[colour]).view(3, 1, 1, 1) * 2 - 1
    return (clip - target).abs().amax(0) < tolerance


def test_sampling_is_deterministic_and_keeps_its_promises():
    assert sample_scenes(5, torch.Generator().manual_seed(3)) == sample_scenes(5, torch.Generator().manual_seed(3))
    specs = sample_scenes(200, torch.Generator().manual_seed(0))
    assert len(set(specs)) == 200
    for s in specs:
        assert 1 <= len(s.distractors) <= 3 and 0 <= s.behind <= len(s.distractors)
        assert s.main.colour != s.background_colour
        assert all(d.colour not in (s.main.colour, s.background_colour) and d.shape != s.main.shape for d in s.distractors)
        front = s.distractors[s.behind:]
        assert all(d.size * d.growth <= FRONT_SIZE[1] * s.main.size + 1e-9 for d in front)
        x, y, radius = main_on_screen(s)
        assert (x.abs() + 1.3 * radius <= 1 + 1e-6).all() and (y.abs() + 1.3 * radius <= 1 + 1e-6).all()
        assert radius.min() >= MIN_MAIN_RADIUS - 1e-6
    assert {s.texture for s in specs} == {"none", "noise", "tiles"}
    assert {len(s.distractors) for s in specs} == {1, 2, 3}
    panning = [s for s in specs if s.pan_x or s.pan_y]
    zooming_in, zooming_out = [s for s in specs if s.zoom > 1.1], [s for s in specs if s.zoom < 0.9]
    assert min(len(panning), len(zooming_in), len(zooming_out)) >= 15
    assert sum(s.pan_x == s.pan_y == 0 and s.zoom == 1 for s in specs) >= 20
    assert sum(0 < s.behind < len(s.distractors) for s in specs) >= 30  # distractors both behind and in front


def test_captions_use_the_existing_vocabulary():
    assert caption_scene(scene(main=SceneObject("circle", "red", "moving left"), background="striped")) == (
        "a red circle moving left on a striped blue background")
    assert caption_scene(scene(main=SceneObject("square", "orange", "bouncing"), background="plain",
                               background_colour="orange", texture="tiles")) == (
        "an orange square bouncing on an orange background")
    captions = [caption_scene(s) for s in sample_scenes(300, torch.Generator().manual_seed(1))]
    assert {w for c in captions for w in c.split()} == set(VOCABULARY)
    tokenizer = build_tokenizer()
    ids = tokenizer(captions).input_ids
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert tokenizer.unk_token_id in tokenizer(["a red circle zooming"]).input_ids[0]  # the check can fail


def test_render_shape_range_determinism_and_batch_independence():
    specs = sample_scenes(3, torch.Generator().manual_seed(2))
    video = render_scenes(specs, num_frames=5, height=32, width=48)
    assert video.shape == (3, 3, 5, 32, 48) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert torch.equal(video, render_scenes(specs, num_frames=5, height=32, width=48))
    assert torch.equal(video[1:2], render_scenes(specs[1:2], num_frames=5, height=32, width=48))
    assert not torch.equal(video[:, :, 0], video[:, :, -1])


def test_main_object_is_visible_in_most_frames():
    specs = sample_scenes(16, torch.Generator().manual_seed(4))
    video = render_scenes(specs, num_frames=9, height=64, width=64)
    alone = render_scenes([replace(s, distractors=(), behind=0) for s in specs], num_frames=9, height=64, width=64)
    shown = torch.stack([near(v, s.main.colour).flatten(1).sum(1) for v, s in zip(video, specs)])  # (B, F)
    whole = torch.stack([near(v, s.main.colour).flatten(1).sum(1) for v, s in zip(alone, specs)])
    assert whole.min() >= 20  # a radius of at least 0.12 at 64x64 is some 45 pixels, fewer for a triangle or star
    assert (shown <= whole + 4).all()  # nothing else in a scene has the main object's colour
    assert shown.min() >= 8  # never wholly hidden
    assert (shown >= 0.5 * whole).float().mean() >= 0.9
    assert (shown < whole - 4).any()  # distractors do pass in front of it at times


def test_camera_pan_moves_the_background():
    top = slice(0, 26)  # rows above the main object (y = 0.7 +- 0.2)
    still = render_scenes([scene()], num_frames=3, height=64, width=64)[0][:, :, top]
    assert torch.equal(still[:, 0], still[:, -1])
    panned = render_scenes([scene(pan_x=0.375)], num_frames=3, height=64, width=64)[0][:, :, top]  # 12 pixels
    first, last = panned[:, 0], panned[:, -1]
    assert (first - last).abs().max() > 0.5
    torch.testing.assert_close(last[..., :-12], first[..., 12:], rtol=0, atol=2e-3)
    down = render_scenes([scene(pan_y=-0.25)], num_frames=3, height=64, width=64)[0]  # the view moves up 8 pixels
    torch.testing.assert_close(down[:, -1, 8:26], down[:, 0, 0:18], rtol=0, atol=2e-3)


def test_camera_zoom_scales_the_background():
    stripes = scene(background="striped", background_angle=0.0, background_period=0.25, texture="none", zoom=2.0)
    video = render_scenes([stripes], num_frames=3, height=64, width=64)[0][:, :, :20]
    edges = [video[:, f].diff(dim=-1).abs().sum().item() for f in (0, 1, 2)]
    assert 0.35 < edges[2] / edges[0] < 0.65 and edges[2] < edges[1] < edges[0]
    x, _, radius = main_on_screen(replace(stripes, main=replace(stripes.main, x=0.3)), samples=2)
    assert abs(float(x[1] / x[0]) - 2) < 1e-5 and abs(float(radius[1] / radius[0]) - 2) < 1e-5


def test_draw_order_decides_occlusion():
    main = SceneObject("circle", "red", "rotating", size=0.4)
    other = SceneObject("square", "blue", "rotating", size=0.15)
    both = [scene(main=main, distractors=(other,), behind=behind, background_colour="green", texture="none")
            for behind in (1, 0)]
    behind, front = render_scenes(both, num_frames=2, height=32, width=32)
    centre = (slice(None), slice(None), 16, 16)
    assert near(behind, "red")[centre[1:]].all() and near(front, "blue")[centre[1:]].all()
    assert near(front, "red").sum() < near(behind, "red").sum() - 20


def test_textures_darken_towards_the_shade_and_move_with_the_world():
    off_screen = SceneObject("circle", "red", "rotating", x=2.0, size=0.2)
    specs = [scene(background="plain", main=off_screen, texture=t) for t in ("none", "noise", "tiles")]
    videos = render_scenes(specs, num_frames=1, height=32, width=32)
    none, noise, tiles = ((v[:, 0] + 1) / 2 for v in videos)
    blue = torch.tensor(COLOURS["blue"])
    assert torch.allclose(none, blue.view(3, 1, 1).expand_as(none))
    shade = _shade(blue)
    for textured in (noise, tiles):
        weight = (textured - blue.view(3, 1, 1)) / (shade - blue).view(3, 1, 1)  # the same along each channel
        assert weight.std(0).max() < 1e-4 and weight.min() > -1e-4 and weight.max() < 1 + 1e-4
        assert weight.std() > 0.05
    assert not torch.allclose(noise, tiles)


def test_demo2_size_fits_the_bundle_and_the_token_target():
    assert SIZES["demo"]["transformer"]["num_attention_heads"] == 4  # the bundled model's size is unchanged
    pipe = build_pipeline("demo2")
    config = pipe.transformer.config
    assert config.num_attention_heads >= 8 and config.text_dim == pipe.text_encoder.config.d_model
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("transformer", "vae", "text_encoder")}
    assert counts == {"transformer": 9_895_232, "vae": 3_602_371, "text_encoder": 529_280}
    assert 2 * sum(counts.values()) + 200_000 <= 30e6  # fp16 weights, plus generous room for configs and tokenizer
    latent_frames = (33 - 1) // 4 + 1
    tokens = latent_frames * (512 // 8 // config.patch_size[1]) * (512 // 8 // config.patch_size[2])
    assert tokens == 9216


def load_training_script():
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_resumes_where_it_stopped(tmp_path, capsys):
    """Three one-step calls with --resume end where one three-step call does, on scenes, with half-size steps."""
    train = load_training_script()
    common = ["--size", "tiny", "--data", "scenes", "--stage", "transformer", "--steps", "3", "--minutes", "1e9",
              "--num-frames", "5", "--resolution", "32", "--batch-size", "2", "--pool", "0", "--device", "cpu",
              "--log-every", "1", "--warmup", "1", "--low-every", "2"]
    train.main(common + ["--out", str(tmp_path / "once")])
    capsys.readouterr()
    for call in range(3):
        train.main(common + ["--out", str(tmp_path / "calls"), "--resume", "--call-minutes", "0"])
        out = capsys.readouterr().out
        assert f"[transformer] step {call + 1} " in out and f"[transformer] step {call + 2} " not in out
        assert (f"resuming {tmp_path / 'calls'}: transformer at step {call}," in out) == (call > 0)
    assert "[transformer] finished" in out
    train.main(common + ["--out", str(tmp_path / "calls"), "--resume"])
    assert "nothing left to train" in capsys.readouterr().out
    once, calls = (torch.load(tmp_path / name / train.STATE_FILE, weights_only=True) for name in ("once", "calls"))
    assert once["step"] == calls["step"] == 3 and once["finished"] and calls["finished"]
    settings = json.loads((tmp_path / "calls" / "dit_sparse_demo.json").read_text())
    assert (settings["height"], settings["cpu"]) == (32, {"height": 16, "width": 16})
    for name in ("transformer", "text_encoder"):
        for key, value in once["weights"][name].items():
            torch.testing.assert_close(calls["weights"][name][key], value, rtol=0, atol=0, msg=f"{name} {key}")
    torch.testing.assert_close(calls["ema"], once["ema"], rtol=0, atol=0)
    moments = zip(once["optimizer"]["state"].values(), calls["optimizer"]["state"].values())
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in moments)
    fresh = build_pipeline("tiny").transformer.state_dict()
    assert not torch.equal(fresh["blocks.0.attn1.to_q.weight"], once["weights"]["transformer"]["blocks.0.attn1.to_q.weight"])


def test_training_goes_on_from_the_pipeline_alone(tmp_path, capsys):
    """Without the exact state, --resume takes the pipeline's weights, keeps the step count and warms up again."""
    train = load_training_script()
    out = tmp_path / "run"
    common = ["--size", "tiny", "--stage", "transformer", "--minutes", "1e9", "--num-frames", "5", "--resolution", "32",
              "--batch-size", "2", "--pool", "0", "--device", "cpu", "--log-every", "1", "--warmup", "4", "--out", str(out)]
    train.main(common + ["--steps", "1"])
    (out / train.STATE_FILE).unlink()
    capsys.readouterr()
    train.main(common + ["--steps", "2", "--resume"])
    log = capsys.readouterr().out
    assert "going on from the pipeline's weights" in log and "transformer (finished) at step 1," in log
    rewarmed = 3e-4 * (0.25 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.5))))  # warm-up step 1 of 4 again, half way
    assert "[transformer] step 2 " in log and f"lr {rewarmed:.2e}" in log
    assert json.loads((out / train.PROGRESS_FILE).read_text())["step"] == 2


def test_compiled_training_matches_eager(tmp_path, capsys):
    """--compile (regional torch.compile of the transformer's blocks) trains the same steps as eager, and saves the same names."""
    train = load_training_script()
    common = ["--size", "tiny", "--data", "scenes", "--stage", "transformer", "--steps", "2", "--num-frames", "5",
              "--resolution", "32", "--batch-size", "2", "--pool", "0", "--device", "cpu", "--log-every", "1",
              "--warmup", "1", "--ema", "0"]
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()  # earlier tests' graphs
        train.main(common + extra + ["--out", str(tmp_path / name)])
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == (name == "compiled")
        out = capsys.readouterr().out
        losses[name] = [float(line.split(" loss ")[1].split()[0]) for line in out.splitlines()
                        if line.startswith("[transformer] step ")]
    assert len(losses["eager"]) == 2
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)
    eager, compiled = (WanPipeline.from_pretrained(tmp_path / name, dtype=torch.float32).transformer.state_dict()
                       for name in ("eager", "compiled"))
    assert list(compiled) == list(eager)
    for key in ("blocks.0.attn1.to_q.weight", "proj_out.weight"):
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-3, rtol=1e-3)


def test_log_splits_the_data_time_into_rendering_and_encoding(tmp_path, capsys):
    """The data share of a transformer step's log line is split into rendering and encoding, which it contains."""
    train = load_training_script()
    train.main(["--size", "tiny", "--data", "scenes", "--stage", "transformer", "--steps", "2", "--num-frames", "5",
                "--resolution", "32", "--batch-size", "2", "--pool", "0", "--device", "cpu", "--log-every", "1",
                "--warmup", "1", "--ema", "0", "--low-every", "2", "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[transformer] step ")]
    assert len(lines) == 2
    for line in lines:
        data, render, encoded = (float(re.search(rf"{key} (\d+)%", line).group(1)) for key in ("data", "render", "encode"))
        assert encoded > 0 and render + encoded <= data + 2  # each share is rounded


def test_uniform_noise_levels_reach_pure_noise_as_often_as_the_sampler():
    """Uniform u, shifted, puts as many training levels above 0.99 as a uniform sampler; logit-normal far fewer."""
    train = load_training_script()
    latents = torch.zeros(20000, 1, 1, 1, 1)
    levels = {}
    for sampling in ("uniform", "logit-normal"):
        _, timestep, _ = train.flow_inputs(latents, 10.0, torch.Generator().manual_seed(0), sampling)
        levels[sampling] = timestep / 1000
    u = 0.99 / (10 - 9 * 0.99)  # the u that shift 10 takes to level 0.99: s = 10 u / (1 + 9 u)
    assert (levels["uniform"] > 0.99).float().mean() == pytest.approx(1 - u, abs=0.01)
    assert (levels["logit-normal"] > 0.99).float().mean() < 0.4 * (1 - u)
    assert levels["uniform"].min() >= 0 and levels["uniform"].max() <= 1


def test_flow_shift_is_trained_and_saved_with_the_pipeline(tmp_path, capsys):
    """--flow-shift goes into the saved scheduler, so the pipeline samples at the shift it was trained at."""
    train = load_training_script()
    train.main(["--size", "tiny", "--stage", "transformer", "--steps", "1", "--num-frames", "5", "--resolution", "32",
                "--batch-size", "2", "--pool", "0", "--device", "cpu", "--flow-shift", "12", "--timestep-sampling",
                "uniform", "--out", str(tmp_path / "run")])
    assert "noise levels: uniform u, flow shift 12" in capsys.readouterr().out
    pipe = WanPipeline.from_pretrained(tmp_path / "run", dtype=torch.float32)
    assert pipe.scheduler.config.flow_shift == 12


def test_demo2_trains_uniform_levels_at_shift_20_unless_told_otherwise():
    train = load_training_script()
    demo2 = train.parse_args(["--size", "demo2", "--stage", "transformer", "--out", "x"])
    assert (demo2.flow_shift, demo2.timestep_sampling) == (20.0, "uniform")
    demo = train.parse_args(["--size", "demo", "--stage", "transformer", "--out", "x"])
    assert (demo.flow_shift, demo.timestep_sampling) == (None, "logit-normal")
    told = train.parse_args(["--size", "demo2", "--stage", "transformer", "--flow-shift", "5", "--timestep-sampling", "logit-normal", "--out", "x"])
    assert (told.flow_shift, told.timestep_sampling) == (5.0, "logit-normal")
