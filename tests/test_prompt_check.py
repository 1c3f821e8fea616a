"""The prompt-following check (dit_sparse/demo/prompt_check.py): it parses exactly the generator's
captions, passes the generator's own clips, and fails clips whose prompt names another motion or
colour, or whose object is missing."""

import json
from types import SimpleNamespace
from dataclasses import replace

import numpy as np
import pytest
import torch

from dit_sparse.demo import STUDY_PROMPTS
from dit_sparse.demo.clips import caption, render_clips, sample_spec
from dit_sparse.demo.prompt_check import PromptParts, check_clip, parse_prompt, summarise
from dit_sparse.study import prompt_following

from test_cli import model_dir  # noqa: F401 (a fixture)


def _frames(spec, size=64):
    return ((render_clips([spec], 17, size, size)[0].permute(1, 2, 3, 0) + 1) / 2).numpy()


def _specs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [sample_spec(gen) for _ in range(n)]


def test_parse_inverts_the_captions():
    for spec in _specs(50, 0):
        parts = parse_prompt(caption(spec))
        assert parts == PromptParts(spec.colour, spec.shape, spec.motion, spec.background, spec.background_colour)
    with pytest.raises(ValueError, match="demo grammar"):
        parse_prompt("a cat")
    with pytest.raises(ValueError, match="vocabulary"):
        parse_prompt("a teal circle moving left on a blue background")


def test_the_generators_clips_follow_their_prompts_and_wrong_prompts_fail():
    specs = _specs(60, 1)
    assert all(check_clip(_frames(s), caption(s))["follows"] for s in specs)
    wrong_motion = wrong_colour = 0
    for s in specs:
        other = next(m for m in ("moving left", "moving up", "moving right") if m != s.motion)
        wrong_motion += check_clip(_frames(s), caption(replace(s, motion=other)))["follows"]
        colour = next(c for c in ("red", "green", "blue", "white") if c not in (s.colour, s.background_colour))
        wrong_colour += check_clip(_frames(s), caption(replace(s, colour=colour)))["follows"]
    assert wrong_motion <= 6 and wrong_colour <= 3


def test_a_missing_object_is_not_visible():
    spec = _specs(1, 2)[0]
    empty = _frames(replace(spec, size=0.0))
    result = check_clip(empty, caption(spec))
    assert not result["visible"] and not result["follows"] and result["object_share"] < 0.003
    assert summarise([result, check_clip(_frames(spec), caption(spec))])["follows"] == 0.5


def test_study_writes_the_ceiling_and_each_model(model_dir, tmp_path):  # noqa: F811
    prompt_following.main(["--model", f"tiny={model_dir}", "--out", str(tmp_path), "--seeds", "0", "--prompts", "2",
                           "--steps", "2", "--num-frames", "5", "--height", "32", "--width", "32", "--device", "cpu"])
    result = json.loads((tmp_path / "prompt_following.json").read_text())
    assert list(result["models"]) == ["procedural generator", "tiny: VAE round trip", "tiny"]
    assert result["models"]["procedural generator"]["summary"]["follows"] == 1.0
    assert result["models"]["tiny"]["summary"]["clips"] == 2
    assert result["models"]["tiny: VAE round trip"]["summary"]["clips"] == 2
    assert set(STUDY_PROMPTS) <= set(prompt_following.PROMPTS)
    assert "| tiny | 2 |" in (tmp_path / "prompt_following.md").read_text()


class _IdentityVAE(torch.nn.Module):
    """encode/decode in diffusers' shape, exact: the round trip must give the clip back."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x * self.scale))

    def decode(self, z):
        return SimpleNamespace(sample=z / self.scale)


def test_round_trip_keeps_layout_and_range():
    frames = prompt_following.generator_clip(STUDY_PROMPTS[0], 5, 32, 32)
    back = prompt_following.round_trip(_IdentityVAE(), frames)
    assert back.shape == frames.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(back, frames, atol=1e-6)


def test_round_trip_only_generates_nothing(model_dir, tmp_path):  # noqa: F811
    prompt_following.main(["--model", f"tiny={model_dir}", "--out", str(tmp_path), "--prompts", "1", "--round-trip-only",
                           "--num-frames", "5", "--height", "32", "--width", "32", "--device", "cpu"])
    result = json.loads((tmp_path / "prompt_following.json").read_text())
    assert list(result["models"]) == ["procedural generator", "tiny: VAE round trip"]
