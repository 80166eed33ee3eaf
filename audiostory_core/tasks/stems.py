"""Stems and cue sheets: every event's clip as its own file at its offset, plus label and cue tracks.

A DAW or video editor wants the story as parts it can move, not one mixed file. Each stem is the
clip exactly as it entered the crossfade (trimmed to its event + crossfade tail, resampled, no fade
applied); laid at its offset with the same crossfade it gives back the mixed story. The offsets
follow :func:`stages.audio.crossfade_concat` rule for rule (including its hard join when a piece is
shorter than the fade). Alongside: ``stems.json`` (index: file, offset, caption), an Audacity label
track (``labels.txt``) and WebVTT cues (``cues.vtt``), with each event's start, end and caption.
Times are on the story's clock, or (dubbing) on the video's: ``origin`` is the video's first-frame time.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..atomic import write_text_atomic
from ..errors import InputError
from ..stages.audio import write_audio

STEMS_FORMAT = "audiostory-stems/1"
INDEX_NAME = "stems.json"
LABELS_NAME = "labels.txt"
CUES_NAME = "cues.vtt"
CUE_FILES = (INDEX_NAME, LABELS_NAME, CUES_NAME)


@dataclass
class Stem:
    """One event: where its clip starts in the story and the span its cue covers (seconds on the clock)."""

    event: int            # 1-based, as the plan text and the re-roll option count events
    caption: str
    file: str
    offset: int           # first sample of the clip in the mixed story
    samples: int          # clip length (event + crossfade tail)
    start: float          # cue start: offset / sample_rate + origin
    end: float            # cue end: the next event's start (the story's end for the last)


def stem_offsets(lengths: Sequence[int], sample_rate: int, crossfade: float) -> list[int]:
    """First sample of each clip in ``crossfade_concat(clips, sample_rate, crossfade)``: a clip starts one
    fade (``int(crossfade * sample_rate)`` samples) before the story so far ends, or right at its end when
    either side is shorter than the fade or the fade is 0 (the hard join of ``crossfade_concat``)."""
    n = max(0, int(crossfade * sample_rate))
    offsets, total = [], 0
    for i, length in enumerate(lengths):
        overlap = n if i > 0 and n > 0 and total >= n and length >= n else 0
        offsets.append(total - overlap)
        total += int(length) - overlap
    return offsets


def story_stems(lengths: Sequence[int], captions: Sequence[str], sample_rate: int, crossfade: float,
                origin: float = 0.0, ext: str = "wav") -> list[Stem]:
    """The stem layout of one story; ``origin`` (seconds) shifts the cue times (the video's first frame)."""
    if len(lengths) != len(captions):
        raise InputError(f"{len(lengths)} clips but {len(captions)} event captions; the clips must come "
                         "from the same plan.")
    offsets = stem_offsets(lengths, sample_rate, crossfade)
    ends = offsets[1:] + [offsets[-1] + int(lengths[-1])] if offsets else []
    width = max(2, len(str(len(lengths))))
    out = []
    for i, (off, end, length, cap) in enumerate(zip(offsets, ends, lengths, captions)):
        start = origin + off / sample_rate
        out.append(Stem(event=i + 1, caption=str(cap), file=f"event{i + 1:0{width}d}_at_{start:.3f}s.{ext}",
                        offset=int(off), samples=int(length), start=round(start, 6),
                        end=round(origin + end / sample_rate, 6)))
    return out


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def audacity_labels(stems: Sequence[Stem]) -> str:
    """Audacity label track: ``start<TAB>end<TAB>label`` per line, seconds (File > Import > Labels)."""
    return "".join(f"{s.start:.6f}\t{s.end:.6f}\t{_one_line(s.caption)}\n" for s in stems)


def _vtt_time(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rest = divmod(ms, 3600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def webvtt_cues(stems: Sequence[Stem]) -> str:
    """WebVTT: one cue per event, identified ``event-N``; caption text escaped (``&``, ``<``, ``>``)."""
    lines = ["WEBVTT", ""]
    for s in stems:
        text = _one_line(s.caption).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        lines += [f"event-{s.event}", f"{_vtt_time(s.start)} --> {_vtt_time(s.end)}", text or "(no caption)", ""]
    return "\n".join(lines)


def stems_index(stems: Sequence[Stem], sample_rate: int, crossfade: float, crossfade_curve: Optional[str],
                 origin: float) -> str:
    return json.dumps({"format": STEMS_FORMAT, "sample_rate": int(sample_rate), "crossfade": float(crossfade),
                       "crossfade_curve": crossfade_curve, "time_origin": float(origin),
                       "events": [asdict(s) for s in stems]},
                      indent=2, ensure_ascii=False)


def write_stems(folder: Union[str, Path], clips: Sequence[torch.Tensor], captions: Sequence[str], sample_rate: int,
                crossfade: float, *, crossfade_curve: Optional[str] = "linear", origin: float = 0.0,
                ext: str = "wav", name_prefix: str = "") -> list[Path]:
    """Write every clip ([C, S]) as a stem, then ``stems.json``, ``labels.txt`` and ``cues.vtt``.

    Each file is written atomically; if one fails, the files this call already wrote are removed, so the
    folder never holds a partial set. ``name_prefix`` prefixes every file name (the save node's counter)."""
    if not clips:
        raise InputError("No clips to write as stems.")
    stems = story_stems([c.shape[-1] for c in clips], captions, sample_rate, crossfade, origin, ext)
    for s in stems:
        s.file = name_prefix + s.file
    folder = Path(folder)
    written: list[Path] = []
    try:
        for s, clip in zip(stems, clips):
            written.append(write_audio(folder / s.file, clip, sample_rate, ext))
        for name, text in ((INDEX_NAME, stems_index(stems, sample_rate, crossfade, crossfade_curve, origin)),
                           (LABELS_NAME, audacity_labels(stems)), (CUES_NAME, webvtt_cues(stems))):
            write_text_atomic(folder / (name_prefix + name), text)
            written.append(folder / (name_prefix + name))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written

