"""Decode, crossfade and write."""
from __future__ import annotations

import math

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
    out = crossfade_concat([a, b], 100000, 3.0, crossfade_curve="equal_power")
    mid = out[0, 400000 - 150000:400000 - 150000 + 1000]
    assert abs(mid.pow(2).mean().item() - 1.0) < 0.1


def test_short_clips_are_joined_without_overlap_as_officially():
    out = crossfade_concat([torch.ones(1, 5), torch.ones(1, 100)], 10, 1.0)
    assert out.shape[1] == 105


@pytest.mark.parametrize("freq", [440.0, 3000.0, 9000.0])
def test_resample_keeps_a_sines_frequency_and_level(freq):
    """1 s of a sine at 44.1 kHz -> 32 kHz: same length in seconds, FFT peak at the same Hz, same RMS."""
    t = torch.arange(44100) / 44100
    x = torch.sin(2 * math.pi * freq * t).repeat(2, 1)
    y = resample(x, 44100, 32000)
    assert y.shape == (2, 32000)
    spectrum = torch.fft.rfft(y[0] * torch.hann_window(32000, periodic=False))
    assert int(spectrum.abs().argmax()) == int(freq)          # 1 Hz bins over one second
    mid = y[:, 1000:-1000]                                    # away from the edges of the filter
    assert abs(mid.pow(2).mean().sqrt().item() - 2 ** -0.5) < 0.01
    ref = torch.sin(2 * math.pi * freq * torch.arange(32000) / 32000)
    assert (y[0, 1000:-1000] - ref[1000:-1000]).abs().max() < 0.01  # the same waveform, not just the peak


def test_resample_removes_content_above_the_new_nyquist():
    t = torch.arange(44100) / 44100
    y = resample(torch.sin(2 * math.pi * 20000.0 * t)[None], 44100, 32000)  # above 16 kHz: must not alias
    assert y[:, 1000:-1000].abs().max() < 0.05


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
