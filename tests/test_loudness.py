"""Output loudness: the level the normalization reaches, checked by an independent meter.

The oracle is FFmpeg's ``ebur128`` filter (its own BS.1770 implementation and true-peak meter, run
through PyAV's filter graph), not pyloudnorm, which does the normalizing.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiostory_core.errors import InputError
from audiostory_core.stages.loudness import full_scale_note, normalize_loudness


def ffmpeg_r128(wave: torch.Tensor, sample_rate: int) -> tuple[float, float]:
    """(integrated loudness LUFS, true peak dBTP) of [C, S] audio, measured by FFmpeg's ebur128 filter."""
    import av

    layout = {1: "mono", 2: "stereo"}[wave.shape[0]]
    g = av.filter.Graph()
    src = g.add_abuffer(format="fltp", sample_rate=sample_rate, layout=layout)
    meter = g.add("ebur128", "metadata=1:peak=true")
    sink = g.add("abuffersink")
    src.link_to(meter)
    meter.link_to(sink)
    g.configure()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave.numpy(), dtype=np.float32), format="fltp",
                                       layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = 0
    g.push(frame)
    g.push(None)
    last = None
    while True:
        try:
            last = g.pull()
        except (EOFError, av.error.BlockingIOError):
            break
    md = last.metadata
    return float(md["lavfi.r128.I"]), 20 * math.log10(float(md["lavfi.r128.true_peak"]))


def story_like(sample_rate: int, seconds: float = 12.0, gain: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Stereo test audio with a story's shape: noise beds, tones and loud short hits at changing levels."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sample_rate)
    t = torch.arange(n) / sample_rate
    bed = torch.randn(2, n, generator=g) * 0.05 * (1 + torch.sin(2 * math.pi * 0.2 * t))
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t) * (t % 3 < 1.5)
    hits = torch.zeros(n)
    for start in torch.randint(0, n - 2000, (12,), generator=g):
        hits[start:start + 2000] = torch.randn(2000, generator=g) * 0.15 * torch.linspace(1, 0, 2000)
    return gain * (bed + tone + hits).float()


@pytest.mark.parametrize("sample_rate", [32000, 44100])
@pytest.mark.parametrize("target", [-23.0, -16.0])
def test_reaches_the_target_loudness_under_the_true_peak_ceiling(sample_rate, target):
    wave = story_like(sample_rate, gain=2.5)           # peaks over full scale, as a generated story can
    before, _ = ffmpeg_r128(wave, sample_rate)
    res = normalize_loudness(wave, sample_rate, target, -1.0)
    loud, peak = ffmpeg_r128(res.audio, sample_rate)
    assert abs(before - target) > 3                     # it had to move
    assert abs(loud - target) <= 0.5, (loud, target)
    assert peak <= -1.0, peak
    assert res.notes == []


def test_a_ceiling_that_binds_keeps_the_peak_and_says_the_target_was_not_reached():
    sr = 32000
    wave = torch.zeros(2, sr * 8)
    wave[:, ::4000] = 0.9                                # clicks: high peaks, very little loudness
    wave += 0.01 * torch.randn(2, sr * 8, generator=torch.Generator().manual_seed(1))
    res = normalize_loudness(wave, sr, -10.0, -2.0)
    loud, peak = ffmpeg_r128(res.audio, sr)
    assert peak <= -2.0 + 0.05, peak                    # at the ceiling (meters differ by hundredths)
    assert loud < -10.0 - 3
    assert len(res.notes) == 1 and "instead of -10" in res.notes[0] and "-2 dBTP ceiling" in res.notes[0]


def test_silence_is_left_as_it_is_with_a_note():
    res = normalize_loudness(torch.zeros(2, 32000 * 2), 32000, -16.0, -1.0)
    assert torch.count_nonzero(res.audio) == 0 and "silent" in res.notes[0]


@pytest.mark.parametrize("target, ceiling, bad", [(0.0, -1.0, "loudness"), (-16.0, 3.0, "true-peak"),
                                                  (float("nan"), -1.0, "loudness")])
def test_out_of_range_settings_are_named(target, ceiling, bad):
    with pytest.raises(InputError, match=bad):
        normalize_loudness(story_like(32000, 2.0), 32000, target, ceiling)


def test_too_short_audio_is_named():
    with pytest.raises(InputError, match="shorter than the 0.4 s block"):
        normalize_loudness(torch.ones(1, 1000) * 0.1, 32000, -16.0, -1.0)


def test_the_note_over_full_scale_names_the_peak_and_the_fix():
    wave = torch.zeros(2, 100)
    wave[1, 50] = -1.10
    note = full_scale_note(wave)
    assert "peaks at 1.10 (+0.8 dBFS)" in note and "--loudness" in note
    wave[1, 50] = -1.0
    assert full_scale_note(wave) is None


def test_generate_loudness_option_writes_the_target_level(tiny_root, tmp_path, capsys):
    import soundfile as sf

    from audiostory_core.cli.main import main

    out, ref = tmp_path / "story.wav", tmp_path / "reference.wav"
    common = ["generate", "--models", str(tiny_root), "--instruction", "A train arrives and leaves.",
              "--duration", "10", "--steps", "3", "--quiet"]
    assert main(common + ["--out", str(ref)]) == 0
    # -30 LUFS: a gain down the ceiling never stops (the tiny model's story can peak over full scale, and a
    # louder target would end at the true-peak ceiling instead, as the library documents)
    assert main(common + ["--out", str(out), "--loudness", "-30", "--true-peak", "-1.5"]) == 0
    err = capsys.readouterr().err
    assert "-> -30.0 LUFS" in err
    data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    loud, peak = ffmpeg_r128(torch.from_numpy(data.T.copy()), sr)
    assert abs(loud - (-30.0)) <= 0.5 and peak <= -1.5, (loud, peak)
    plain, _ = sf.read(str(ref), dtype="float32", always_2d=True)
    ratio = data / np.where(plain == 0, 1, plain)        # one gain, nothing else changed
    assert np.allclose(ratio[np.abs(plain) > 1e-3], ratio[np.abs(plain) > 1e-3].mean(), rtol=1e-4)


def test_generate_refuses_a_bad_target_before_loading_anything(tmp_path, capsys):
    from audiostory_core.cli.main import main

    out = tmp_path / "story.wav"
    assert main(["generate", "--models", str(tmp_path / "no-models"), "--instruction", "rain", "--duration", "5",
                 "--out", str(out), "--loudness", "3"]) == 2
    assert "loudness must be -70 to -5 LUFS" in capsys.readouterr().err and not out.exists()
