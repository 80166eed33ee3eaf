"""Tensor layouts between the core and ComfyUI: LATENT [E, 64, T] vs the core's [E, T, 64],
CONDITIONING pairs, AUDIO dicts and padded clip batches.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..audiostory_core.errors import InputError
from .values import EventsBundle


def seconds_to_bits(seconds: Sequence[float]) -> torch.Tensor:
    """Per-event clip seconds as float32 bits in an int32 tensor.

    ComfyUI casts float conditioning tensors to the model dtype (fp16/bf16 would round 3.3 s); an
    integer tensor passes through untouched, so the DiT sees the same float32 value as the reference.
    """
    return torch.tensor([float(s) for s in seconds], dtype=torch.float32).view(torch.int32).clone()


def bits_to_seconds(bits: torch.Tensor) -> torch.Tensor:
    if bits.dtype == torch.int32:
        return bits.contiguous().view(torch.float32)
    return bits.float()


def to_comfy_latent(latents: torch.Tensor) -> torch.Tensor:
    """Core layout [E, T, 64] -> ComfyUI audio layout [E, 64, T]."""
    return latents.transpose(1, 2).contiguous()


def conditioning_pair(events: EventsBundle) -> tuple[list, list]:
    """CONDITIONING positive (fused tokens) / negative (null embedding), both with per-event seconds."""
    e = events.count
    extra = {"audiostory_seconds": seconds_to_bits(events.clip_seconds), "audiostory_events": e}
    pos = [[events.fused.float().cpu(), dict(extra)]]
    neg = [[events.null_embedding.float().cpu().expand(e, -1, -1).contiguous(), dict(extra)]]
    return pos, neg


def empty_latent(events: EventsBundle) -> dict:
    return {"samples": torch.zeros(events.count, 64, events.audio_seq_len), "type": "audio"}


def check_latent_matches(samples: torch.Tensor, events: EventsBundle) -> None:
    if samples.dim() != 3 or samples.shape[1] != 64:
        raise InputError(f"The latent must be an AudioStory audio latent [events, 64, frames]; got "
                         f"{tuple(samples.shape)}.")
    if samples.shape[0] != events.count:
        raise InputError(f"The latent has {samples.shape[0]} clips but the events input has {events.count}; "
                         "connect the LATENT that was sampled from these events.")


def pad_clips(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """Clips [C, S_i] -> a batch [E, C, max S] (zero-padded at the end)."""
    n = max(c.shape[-1] for c in clips)
    ch = max(c.shape[0] for c in clips)
    out = torch.zeros(len(clips), ch, n)
    for i, c in enumerate(clips):
        out[i, : c.shape[0], : c.shape[-1]] = c
    return out


def audio_dict(wave: torch.Tensor, sample_rate: int) -> dict:
    """Core [C, S] or [B, C, S] -> ComfyUI AUDIO."""
    if wave.dim() == 2:
        wave = wave.unsqueeze(0)
    return {"waveform": wave.float().cpu().contiguous(), "sample_rate": int(sample_rate)}


def audio_from_dict(audio: Any, what: str = "audio") -> tuple[torch.Tensor, int]:
    """ComfyUI AUDIO -> ([C, S] first batch item, sample_rate) with clear errors."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError(f"{what} is not an AUDIO value (waveform + sample_rate).")
    w = audio["waveform"]
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[-1] == 0:
        raise InputError(f"{what} waveform must be [batch, channels, samples] and non-empty; got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}.")
    if w.shape[0] > 1:
        # the story is one track; a batch of clips is joined end to end
        w = torch.cat(list(w), dim=-1).unsqueeze(0)
    return w[0].float().cpu(), int(audio["sample_rate"])
