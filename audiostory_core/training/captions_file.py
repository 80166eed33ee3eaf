"""``caption-videos``: a manifest whose video lines are captioned once by the VLM, written out for review.

Why: VLM captions are a guess; written as ordinary long-recording lines (``{"video", "instruction",
"events"}``) a user can read and edit them, and ``train --data`` then uses them without loading the VLM.
Lines that need no captions (clips, recordings, videos with events) are copied as they are; every path is
rewritten relative to the output file, so it may live in another folder. A line that cannot be captioned is
reported with its reason and left out (never silently).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from ..atomic import write_text_atomic
from ..media.video import probe_video, require_audio_track
from ..progress import Hooks
from .datasets import DataReport, find_manifest, read_lines
from .video_rows import CaptionSource, caption_video


def caption_manifest(data: Union[str, Path], captions: CaptionSource, max_clip_seconds: float, out_folder: Path,
                     confine: bool = False, hooks: Optional[Hooks] = None) -> tuple[list[dict], DataReport]:
    """The manifest's lines with each video line without events replaced by its VLM captions (one event
    per scene, the dubbing instruction); the report lists the lines kept and the ones left out."""
    manifest = find_manifest(data)
    report = DataReport()

    def captioned(where: str, row: dict, kind: str, name: str, path: Path) -> list[tuple[dict, str]]:
        row = dict(row, **{kind: os.path.relpath(path, out_folder.resolve())})
        if kind == "video" and "events" not in row:
            require_audio_track(probe_video(path))       # a silent video cannot train: say so now
            instruction, events = caption_video(path, captions.get(), max_clip_seconds, hooks)
            row = {"video": row["video"], "instruction": instruction,
                   "events": [{"start": round(s, 6), "end": round(t, 6), "caption": c} for s, t, c in events]}
        return [(row, f"{where} ({name})")]

    return read_lines(manifest, report, confine, captioned), report


def write_captions(out: Union[str, Path], lines: list[dict]) -> Path:
    """One JSON object per line, written atomically (a failure leaves the old file or none)."""
    return write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
