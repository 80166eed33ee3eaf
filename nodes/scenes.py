"""The video nodes' steps without ComfyUI: the video file of a VIDEO, scenes, keyframes, typed captions,
the dubbing plan, and the mux options.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional
import tempfile

import torch
import numpy as np

from ..audiostory_core.errors import InputError
from ..audiostory_core.stages.plan import StoryPlan
from ..audiostory_core.media.captioning import apply_captions, parse_captions
from ..audiostory_core.tasks.dubbing import dubbing_plan, max_scene_seconds
from ..audiostory_core.media.video import SceneList, detect_scenes


MUX_POLICIES = ("pad", "trim", "keep_video")


EXISTING_AUDIO = ("replace", "mix")


def video_file(video: Any) -> str:
    """A file path for a ComfyUI VIDEO: its own file, a temp copy of in-memory bytes, or (for videos
    built from frames) a temp MP4 written by the VIDEO itself."""
    src = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(src, (str, Path)) and Path(src).is_file():
        return str(src)
    tmp = Path(tempfile.mkdtemp(prefix="audiostory-video-"))
    if src is not None and hasattr(src, "read"):
        src.seek(0)
        fmt = str(video.get_container_format() or "mp4").split(",")[0] if hasattr(video, "get_container_format") else "mp4"
        ext = {"matroska": "mkv", "mov": "mov", "webm": "webm"}.get(fmt, "mp4")
        out = tmp / f"input.{ext}"
        out.write_bytes(src.read())
        return str(out)
    if hasattr(video, "save_to"):
        out = tmp / "input.mp4"
        video.save_to(str(out))
        return str(out)
    raise InputError("The VIDEO input has no file or stream to read.")


def scenes_for_video(path: str, max_clip_seconds: float, crossfade: float, *, threshold: float,
                     analysis_fps: float, min_scene_seconds: float, keyframes: int, allow_vfr: bool,
                     hooks=None) -> SceneList:
    return detect_scenes(path, max_scene_seconds=max_scene_seconds(max_clip_seconds, crossfade), threshold=threshold,
                         analysis_fps=analysis_fps, min_scene_seconds=min_scene_seconds, keyframes=keyframes,
                         allow_vfr=allow_vfr, hooks=hooks)


def keyframe_batch(scenes: SceneList) -> torch.Tensor:
    """One IMAGE batch [K, H, W, 3] (0..1) of every scene's keyframes, padded to a common size."""
    frames = [k for s in scenes.scenes for k in s.keyframes]
    if not frames:
        return torch.zeros(1, 64, 64, 3)
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    out = torch.zeros(len(frames), h, w, 3)
    for i, f in enumerate(frames):
        out[i, : f.shape[0], : f.shape[1]] = torch.from_numpy(f.astype(np.float32) / 255.0)
    return out


def apply_typed_captions(scenes: SceneList, text: str) -> bool:
    """Apply user-typed captions when ``text`` is not blank; returns whether it did."""
    if not (text or "").strip():
        return False
    apply_captions(scenes, parse_captions(text, len(scenes.scenes)))
    return True


def plan_for_scenes(planner, scenes: SceneList, brief: str, captions: str, event_captions: str,
                    max_new_tokens: int, hooks=None, plan_options: Optional[dict] = None) -> StoryPlan:
    apply_typed_captions(scenes, captions)
    return dubbing_plan(planner, scenes, brief, event_captions=event_captions, max_new_tokens=max_new_tokens,
                        hooks=hooks, plan_options=plan_options).plan


def captions_json(scenes: SceneList) -> str:
    return json.dumps([s.caption for s in scenes.scenes], ensure_ascii=False, indent=1)
