"""Output level: EBU R128 loudness normalization with a true-peak ceiling, and the over-full-scale note.

Off by default (the reference computation writes the decoder's level unchanged; a story can peak over
1.0). Loudness is measured by ``pyloudnorm`` (ITU-R BS.1770-4, the meter EBU R128 uses); the true peak
is the sample peak oversampled to at least 192 kHz (BS.1770-4 Annex 2: 4x at 48 kHz). One linear gain is applied: the target
loudness, lowered where it would push the true peak over the ceiling (no limiter, no compression),
and the result says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import InputError

# Accepted targets (LUFS) and ceilings (dBTP); the CLI and the save node take their ranges from here.
LOUDNESS_RANGE = (-70.0, -5.0)
TRUE_PEAK_RANGE = (-20.0, 0.0)
LOUDNESS_OFF = 0.0                 # the save node's "leave the level as it is" value (not a valid target)
DEFAULT_TRUE_PEAK = -1.0            # EBU R128 / streaming services' ceiling
TRUE_PEAK_RATE = 192_000           # BS.1770-4 Annex 2: 4x oversampling of 48 kHz; lower rates go at least as high


@dataclass
class LoudnessResult:
    """The normalized audio and what was done to it (all levels as measured, in LUFS / dBTP / dB)."""

    audio: torch.Tensor
    loudness_before: float
    loudness_after: float
    true_peak_after: float
    gain_db: float
    notes: list[str] = field(default_factory=list)


def check_loudness_args(target_lufs: float, ceiling_dbtp: float) -> None:
    """Named errors for a target or ceiling outside the ranges above."""
    lo, hi = LOUDNESS_RANGE
    if not (isinstance(target_lufs, (int, float)) and lo <= target_lufs <= hi):
        raise InputError(f"loudness must be {lo:g} to {hi:g} LUFS (e.g. -16 for streaming, -23 for EBU R128 "
                         f"broadcast), got {target_lufs}")
    lo, hi = TRUE_PEAK_RANGE
    if not (isinstance(ceiling_dbtp, (int, float)) and lo <= ceiling_dbtp <= hi):
        raise InputError(f"true-peak ceiling must be {lo:g} to {hi:g} dBTP (e.g. -1), got {ceiling_dbtp}")


def _as_channels_first(wave: torch.Tensor) -> torch.Tensor:
    if wave.dim() == 1:
        return wave.unsqueeze(0)
    if wave.dim() != 2:
        raise InputError(f"audio must be [channels, samples], got shape {tuple(wave.shape)}")
    return wave


def integrated_loudness(wave: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness in LUFS of ``[C, S]`` audio (pyloudnorm's BS.1770-4 meter); -inf for silence."""
    import pyloudnorm

    wave = _as_channels_first(wave)
    meter = pyloudnorm.Meter(int(sample_rate))
    if wave.shape[-1] < int(meter.block_size * sample_rate):
        raise InputError(f"audio of {wave.shape[-1] / sample_rate:.3f} s is shorter than the {meter.block_size} s "
                         "block of the loudness meter; it cannot be loudness-normalized")
    return float(meter.integrated_loudness(wave.double().T.cpu().numpy()))


def true_peak_dbtp(wave: torch.Tensor, sample_rate: int) -> float:
    """True peak in dBTP: the largest absolute sample oversampled (x4 or more) to >= 192 kHz; -inf for silence."""
    from .audio import resample

    wave = _as_channels_first(wave).float().cpu()
    factor = max(4, math.ceil(TRUE_PEAK_RATE / int(sample_rate)))
    up = resample(wave, int(sample_rate), int(sample_rate) * factor)
    peak = float(torch.maximum(up.abs().max(), wave.abs().max()))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def normalize_loudness(wave: torch.Tensor, sample_rate: int, target_lufs: float,
                       ceiling_dbtp: float = DEFAULT_TRUE_PEAK) -> LoudnessResult:
    """One gain to ``target_lufs``, lowered so that the true peak stays at or under ``ceiling_dbtp``."""
    check_loudness_args(target_lufs, ceiling_dbtp)
    wave = _as_channels_first(wave).float()
    before = integrated_loudness(wave, sample_rate)
    if not math.isfinite(before):
        return LoudnessResult(wave, before, before, true_peak_dbtp(wave, sample_rate), 0.0,
                              ["the audio is silent (below the meter's -70 LUFS gate): its level was left as it was"])
    gain_db = target_lufs - before
    peak = true_peak_dbtp(wave, sample_rate)
    notes = []
    if peak + gain_db > ceiling_dbtp:
        gain_db = ceiling_dbtp - peak
        notes.append(f"loudness {before + gain_db:.1f} LUFS instead of {target_lufs:g}: the gain stops where the "
                     f"true peak reaches the {ceiling_dbtp:g} dBTP ceiling (this story's peak-to-loudness ratio is "
                     f"{peak - before:.1f} dB; a lower target or a higher ceiling reaches the target)")
    out = wave * (10.0 ** (gain_db / 20.0))
    return LoudnessResult(out, before, integrated_loudness(out, sample_rate), true_peak_dbtp(out, sample_rate),
                          gain_db, notes)


def full_scale_note(wave: torch.Tensor) -> str | None:
    """A note when a sample exceeds full scale (|x| > 1): float WAV keeps it, every fixed-point format clips."""
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    if peak <= 1.0:
        return None
    return (f"the audio peaks at {peak:.2f} ({20 * math.log10(peak):+.1f} dBFS), over full scale: a float WAV "
            "keeps it, but FLAC, MP3, Opus and most players clip it. Normalize it (CLI: --loudness -16 "
            "--true-peak -1; save node: loudness_lufs -16, true_peak_dbtp -1)")
