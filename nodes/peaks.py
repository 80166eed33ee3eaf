"""What the Timeline widget (web/timeline.js) draws after a run: per-event waveform peaks and CLAP scores.

ComfyUI-free. The Decode node and the Score node add these payloads to their UI output (no new socket: the
node schemas stay as they are); ComfyUI sends them to the page in its ``executed`` message (again from its
cache when the node is cached). The widget shows them only on a timeline whose plan has the same events
(caption and duration, in order), so a plan edited after the run shows no stale waveform. Every payload is
bounded: ``PEAK_PAIRS`` min/max pairs per event, at most ``validation.MAX_EVENTS`` events.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

PEAK_PAIRS = 200                 # min/max pairs per event: a block is at most a few hundred pixels wide
PEAK_DECIMALS = 4
PEAKS_KEY = "audiostory_peaks"   # UI output keys, read by web/timeline.js
SCORES_KEY = "audiostory_scores"


def clip_peaks(wave: torch.Tensor, pairs: int = PEAK_PAIRS) -> list[float]:
    """``wave`` [C, S] (or [S]) as ``pairs`` (fewer for a shorter clip) min/max pairs over all channels, flat
    ``[min0, max0, min1, max1, ...]``; bucket k covers samples ``[k*S//pairs, (k+1)*S//pairs)``."""
    w = wave.detach().float().cpu()
    if w.dim() == 1:
        w = w[None]
    n = int(w.shape[-1])
    pairs = max(0, min(int(pairs), n))
    out: list[float] = []
    for k in range(pairs):
        seg = w[:, k * n // pairs:(k + 1) * n // pairs]
        out += [round(float(seg.min()), PEAK_DECIMALS), round(float(seg.max()), PEAK_DECIMALS)]
    return out


def plan_events(captions: Sequence[str], durations: Sequence[float]) -> list[list]:
    """The events a payload belongs to, ``[[caption, duration], ...]``: what the widget matches its plan on."""
    return [[str(c), float(d)] for c, d in zip(captions, durations)]


def peaks_ui(captions: Sequence[str], durations: Sequence[float], clips: Sequence[torch.Tensor],
             sample_rate: int) -> dict:
    """The Decode node's UI output: each clip's peaks over its own event (the crossfade tail, which the next
    block's start hears mixed in, is left out)."""
    peaks = [clip_peaks(c[..., :max(1, round(float(d) * sample_rate))]) for c, d in zip(clips, durations)]
    return {PEAKS_KEY: [{"events": plan_events(captions, durations), "peaks": peaks}]}


def scores_ui(captions: Sequence[str], durations: Sequence[float], scores: Sequence[float],
              story: Optional[float] = None) -> dict:
    """The Score node's UI output: one CLAP score per event (and the story's)."""
    return {SCORES_KEY: [{"events": plan_events(captions, durations),
                          "scores": [round(float(s), 4) for s in scores],
                          "story": None if story is None else round(float(story), 4)}]}
