"""The continuation nodes' steps without ComfyUI: checkpoint tensors, placeholders, context, join.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..audiostory_core.tasks.continuation import (AudioContext, PlaceholderLayout, WhisperFeatures,
                                                  build_audio_context, check_input_audio, join)
from ..audiostory_core.errors import InputError


_RESAMPLER_CACHE: dict[tuple[str, float], dict[str, torch.Tensor]] = {}


def checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Only the whisper_resampler_llava tensors of a checkpoint (cached per file and mtime)."""
    from ..audiostory_core.tasks.continuation import RESAMPLER_PREFIX
    from ..audiostory_core.models.weights import load_torch_checkpoint

    key = (str(checkpoint), checkpoint.stat().st_mtime)
    if key not in _RESAMPLER_CACHE:
        full = load_torch_checkpoint(checkpoint)
        _RESAMPLER_CACHE.clear()
        _RESAMPLER_CACHE[key] = {k: v.clone() for k, v in full.items() if k.startswith(RESAMPLER_PREFIX)}
        del full
    return _RESAMPLER_CACHE[key]


def parse_placeholder(text: str) -> PlaceholderLayout:
    parts = (text or "").split(",")
    if len(parts) != 3:
        raise InputError("placeholder must be 'open,slot,close', e.g. '<aud>,<aud_{:05d}>,</aud>'.")
    return PlaceholderLayout(*[p.strip() for p in parts])


def make_audio_context(planner, wave: torch.Tensor, sample_rate: int, *, tensors: Optional[dict],
                       whisper: Optional[WhisperFeatures], description: str, mode: str, long_input: str,
                       placeholder: str, instruction: str, total_duration: float) -> AudioContext:
    """AUDIO -> AudioContext, bound to ``instruction`` when one is given (so ``.context`` is ready to use).

    The Planner node does not rely on that binding: it calls ``ctx.prompt_context`` for its own
    instruction and duration (:func:`nodes.values.planner_audio_context`)."""
    audio = check_input_audio(wave, sample_rate)
    ctx = build_audio_context(planner, audio, checkpoint_tensors=tensors, whisper=whisper, description=description,
                              mode=mode, long_input=long_input, layout=parse_placeholder(placeholder))
    if instruction.strip():
        ctx.bind(planner.tokenizer, instruction, total_duration)
    return ctx


def join_continuation(ctx_or_audio: Any, story: torch.Tensor, sample_rate: int, crossfade: float,
                      curve: str, output: str) -> torch.Tensor:
    """The node-side join: input (from the context or an AUDIO) + the rendered story."""
    if output == "continuation":
        return story
    if isinstance(ctx_or_audio, AudioContext):
        if ctx_or_audio.audio is None:
            raise InputError("The audio context carries no input audio.")
        inp = ctx_or_audio.audio
    else:
        inp = check_input_audio(*ctx_or_audio)
    return join(inp, story, sample_rate, crossfade, curve)
