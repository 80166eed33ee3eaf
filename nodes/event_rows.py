"""Re-roll in the sampler node without ComfyUI: which events to render and the sub-batch to sample.

The sampler node with a previous LATENT samples only the listed events and copies the other rows of the
previous latent unchanged, so an upstream Score node can pick the events and ComfyUI's cache keeps the
planner, the event tokens and the first full render.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..audiostory_core.errors import InputError
from ..audiostory_core.tasks.reroll import parse_events
from .layout import check_latent_matches
from .values import EventsBundle


@dataclass
class EventRows:
    """A subset of an events bundle, shaped like one for the samplers (fused, null, seconds, count, T).

    ``clip_seconds`` keep each event's own length (a non-last event keeps its crossfade tail even when it is
    the last row of the subset)."""

    fused: torch.Tensor
    null_embedding: torch.Tensor
    clip_seconds: list[float]
    audio_seq_len: int

    @property
    def count(self) -> int:
        return int(self.fused.shape[0])


def render_rows(previous: Optional[dict], render_events: Any, events: EventsBundle) -> Optional[list[int]]:
    """0-based rows to sample, or None for a normal render of every event.

    With a previous LATENT, ``render_events`` lists the events to re-render (1-based, "2,4", "2-4", "all";
    empty = none, the previous latent passes through). Without one, only "" / "all" are allowed.
    """
    spec = "" if render_events is None else str(render_events)
    if previous is None:
        if spec.strip().lower() not in ("", "all"):
            raise InputError(f"render_events={spec!r} needs the previous LATENT whose other events are kept; "
                             "connect the first sampler's LATENT to 'previous'.")
        return None
    if not isinstance(previous, dict) or "samples" not in previous:
        raise InputError("previous must be a LATENT from an AudioStory sampler.")
    check_latent_matches(previous["samples"], events)
    return parse_events(spec, events.count)


def event_rows(events: EventsBundle, rows: list[int]) -> EventRows:
    secs = events.clip_seconds
    return EventRows(fused=events.fused[rows], null_embedding=events.null_embedding,
                     clip_seconds=[secs[i] for i in rows], audio_seq_len=events.audio_seq_len)


def merge_rows(previous: torch.Tensor, rows: list[int], sampled: torch.Tensor) -> torch.Tensor:
    """The previous comfy latent [E, 64, T] with ``rows`` replaced by ``sampled`` [len(rows), 64, T]."""
    out = previous.detach().clone()
    if rows:
        out[rows] = sampled.to(out.device, out.dtype)
    return out
