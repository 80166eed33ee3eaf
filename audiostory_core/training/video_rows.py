"""Training rows naming a video: the audio is its track, the events are the user's or the dubbing VLM's.

Why this shape: a row without events is captioned exactly as ``dub`` captions a video (the same scene
detection and defaults, the same VLM and prompt, the instruction the dubbing planner is given), so a LoRA
trained on it meets the same kind of conditioning when it dubs. Scenes are split at the DiT's clip length
(training clips are not crossfaded). The VLM is large: it is loaded on the first row that needs it, never
for a data set whose video rows all carry events, and released before the AudioStory models load.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ..errors import AudioStoryError, InputError
from ..media.video import detect_scenes, read_audio_track
from ..progress import Hooks, as_hooks
from ..stages.grammar import build_instruction
from ..tasks.dubbing import describe_scenes, instruction_total
from ..validation import MAX_EVENTS, MIN_EVENT_SECONDS, check_event, check_instruction

Event = tuple[float, float, str]          # (start, end, caption), seconds on the video's clock


@dataclass
class CaptionSource:
    """Where video rows without events get their captions.

    ``load`` makes the captioner (anything with ``VisionCaptioner.caption(images)``) on the first such row;
    ``missing`` is what the user must pass when there is no ``load`` (each surface names its own option)."""

    load: Optional[Callable[[], Any]] = None
    missing: str = "pass a CaptionSource(load=...) to load_examples"
    captioner: Any = None

    def get(self) -> Any:
        if self.captioner is None:
            if self.load is None:
                raise InputError(f"this video row has no 'events' and no VLM was given to caption it: {self.missing}")
            self.captioner = self.load()
        return self.captioner

    def release(self) -> None:
        """Drop the loaded VLM (its memory is needed by the models that train)."""
        if self.captioner is not None:
            self.captioner = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def caption_video(path: Union[str, Path], captioner: Any, max_clip_seconds: float,
                  hooks: Optional[Hooks] = None) -> tuple[str, list[Event]]:
    """(instruction, events) of a video as dubbing sees it: one event per scene, captioned by ``captioner``.

    A scene shorter than the shortest event, or a caption that fails the caption limits, is an
    :class:`InputError` naming the scene (the row is skipped, never silently trimmed)."""
    hooks = as_hooks(hooks)
    scenes = detect_scenes(path, max_scene_seconds=max_clip_seconds, hooks=hooks)
    if len(scenes.scenes) > MAX_EVENTS:
        raise InputError(f"{len(scenes.scenes)} scenes; one row holds at most {MAX_EVENTS} events (cut the video)")
    for k, sc in enumerate(scenes.scenes):
        hooks.check()
        where = f"scene {k + 1} ({sc.start:.2f}-{sc.end:.2f} s)"
        if sc.duration < MIN_EVENT_SECONDS:
            raise InputError(f"{where} lasts {sc.duration:.3f} s; an event needs at least {MIN_EVENT_SECONDS:g} s")
        cap = captioner.caption(sc.keyframes)
        try:
            check_event(cap, sc.duration, f"the VLM's caption of {where}")
        except AudioStoryError as e:
            raise InputError(str(e).rstrip(".")) from e
        sc.caption = cap.strip()
        hooks.report("captions", k + 1, len(scenes.scenes))
    instruction = build_instruction(describe_scenes("", scenes), instruction_total(scenes.duration))
    check_instruction(instruction)
    return instruction, [(sc.start, sc.end, sc.caption) for sc in scenes.scenes]


def video_audio(path: Union[str, Path]) -> tuple[torch.Tensor, int, float]:
    """The video's audio track ([2, S] float32 at its own rate, index 0 at the first video frame), its rate
    and the video's length in seconds (the clock events and scenes are written on)."""
    wave, rate, info = read_audio_track(path)
    return torch.from_numpy(wave), rate, info.duration
