"""Decode, crossfade and write."""
from __future__ import annotations

import pytest
import torch

from audiostory_core.stages.audio import crossfade_concat, read_audio, resample, write_audio
from audiostory_core.stages.event_tokens import clip_seconds


def test_crossfade_total_equals_sum_of_durations():
    sr, fade = 32000, 3.0
    durations = [4.0, 6.5, 5.0, 3.2]
    clips = [torch.randn(2, int(s * sr)) for s in clip_seconds(durations, fade)]
    out = crossfade_concat(clips, sr, fade)
    assert out.shape == (2, int(sum(durations) * sr))


def test_linear_crossfade_matches_the_official_ramps():
    a, b = torch.ones(1, 10), torch.full((1, 10), 3.0)
    out = crossfade_concat([a, b], sample_rate=2, seconds=2.0)  # 4-sample fade
    ramp = torch.linspace(0, 1, 4)
    torch.testing.assert_close(out[0, 6:10], 1 * (1 - ramp) + 3 * ramp)
    assert out.shape[1] == 16


def test_equal_power_keeps_constant_power_for_uncorrelated_noise():
    torch.manual_seed(0)
    a, b = torch.randn(1, 400000), torch.randn(1, 400000)
    out = crossfade_concat([a, b], 100000, 3.0, curve="equal_power")
    mid = out[0, 400000 - 150000:400000 - 150000 + 1000]
    assert abs(mid.pow(2).mean().item() - 1.0) < 0.1


def test_short_clips_are_joined_without_overlap_as_officially():
    out = crossfade_concat([torch.ones(1, 5), torch.ones(1, 100)], 10, 1.0)
    assert out.shape[1] == 105


def test_resample_length():
    x = torch.randn(2, 44100)
    assert resample(x, 44100, 32000).shape == (2, 32000)


def test_write_is_atomic_and_round_trips(tmp_path):
    x = (torch.rand(2, 1000) - 0.5)
    f = write_audio(tmp_path / "a.wav", x, 32000)
    y, sr = read_audio(f)
    assert sr == 32000 and torch.allclose(x, y)
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(Exception, match="Unsupported"):
        write_audio(tmp_path / "a.mp3", x, 32000)


def test_story_length_from_the_pipeline(shared_pipeline):
    res = shared_pipeline.generate("A thunderstorm rolls over a quiet farm at night.", 12.0, steps=4)
    assert res.audio.shape == (2, 12 * 32000)
    assert res.latents.shape == (3, 176, 64)
    assert res.problems == []
