"""Video probing and scene detection with PyAV, streaming (memory does not grow with the video length).

Why this shape:
* Shot boundaries are found on small grey thumbnails sampled at a low rate (``analysis_fps``). Every
  frame must still be decoded (codecs need it), but only the sampled ones are converted and compared.
  The full-resolution frames decoded since the last sample are kept (a handful) so a detected cut can
  be placed on the exact first frame of the new shot, not just to the nearest sample.
* All times are relative to the first video frame (its pts), the same origin the muxer uses, so the
  soundtrack starts in sync even when a container has a non-zero start time.
* Scenes longer than one DiT clip can hold are split into equal parts; scenes shorter than
  ``min_scene_seconds`` (flashes, fades) are merged into their neighbour.
* Keyframes are bounded per scene: a buffer at most ``4 * keyframes`` RGB frames, decimated in place.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InputError
from ..progress import Hooks, as_hooks

PathLike = Union[str, Path]
SCENES_FORMAT = "audiostory-scenes/1"


@dataclass
class VideoInfo:
    """What the rest of the pipeline needs to know about a video file."""

    path: str
    container: str
    video_codec: str
    width: int
    height: int
    frame_rate: float            # average frame rate
    frame_count: int
    start: float                 # pts of the first frame, seconds (the time origin of scenes)
    duration: float              # first frame to end of last frame, seconds
    has_audio: bool
    variable_frame_rate: bool
    frame_interval_range: tuple[float, float] = (0.0, 0.0)   # min/max seconds between frames


@dataclass
class Scene:
    """One shot (or one part of a long shot), times in seconds from the first frame."""

    start: float
    end: float
    caption: str = ""
    keyframe_times: list[float] = field(default_factory=list)
    keyframes: list[np.ndarray] = field(default_factory=list, repr=False)   # [H, W, 3] uint8 RGB

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class SceneList:
    """Scenes of one video; JSON-serialisable (keyframes are not written) and editable by users."""

    info: VideoInfo
    scenes: list[Scene]

    @property
    def duration(self) -> float:
        return self.info.duration

    def to_dict(self) -> dict:
        return {"format": SCENES_FORMAT, "video": self.info.path, "duration": self.info.duration,
                "scenes": [{"start": round(s.start, 6), "end": round(s.end, 6), "caption": s.caption}
                           for s in self.scenes]}

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def captions(self) -> list[str]:
        return [s.caption for s in self.scenes]


# ---------------------------------------------------------------- probing
def _open(path: PathLike):
    import av

    p = Path(path)
    if not p.is_file():
        raise InputError(f"Video file {p} does not exist.")
    try:
        return av.open(str(p))
    except Exception as e:  # av.error.InvalidDataError and friends
        raise InputError(f"Cannot open {p} as a video container ({e}). Is it a video file? "
                         "Supported: anything FFmpeg reads (MP4, MOV, MKV, WebM, AVI, ...).") from e


def _video_stream(container, path: PathLike):
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise InputError(f"{path} has no video stream (it contains {kinds}). Give a video file.")
    return container.streams.video[0]


def _frame_intervals(pts: list[int], time_base: Fraction) -> np.ndarray:
    if len(pts) < 2:
        return np.zeros(0)
    p = np.array(sorted(set(pts)), dtype=np.float64) * float(time_base)
    return np.diff(p)


def is_variable_frame_rate(intervals: np.ndarray, time_base: Fraction, tolerance: float = 0.1) -> bool:
    """True when some frame interval differs from the typical one by more than ``tolerance`` (10 %)
    and more than two timestamp ticks (containers round timestamps to their time base)."""
    if intervals.size < 2:
        return False
    med = float(np.median(intervals))
    slack = max(tolerance * med, 2.0 * float(time_base))
    return bool(np.any(np.abs(intervals - med) > slack))


def probe_video(path: PathLike) -> VideoInfo:
    """Read timestamps of every video packet (no decoding) to get length, frame count and VFR."""
    with _open(path) as c:
        vs = _video_stream(c, path)
        tb = vs.time_base
        pts: list[int] = []
        last_dur = 0
        try:
            for pkt in c.demux(vs):
                if pkt.pts is None or pkt.size == 0:
                    continue
                pts.append(int(pkt.pts))
                if pkt.pts == max(pts):
                    last_dur = int(pkt.duration or 0)
        except Exception as e:
            raise InputError(f"{path}: the video stream is corrupt ({e}).") from e
        if not pts:
            raise InputError(f"{path} has a video stream with zero frames. Nothing to dub.")
        intervals = _frame_intervals(pts, tb)
        vfr = is_variable_frame_rate(intervals, tb)
        typical = float(np.median(intervals)) if intervals.size else 0.0
        first, last = min(pts) * float(tb), max(pts) * float(tb)
        frame_dur = last_dur * float(tb) if last_dur > 0 else typical
        if frame_dur <= 0 and vs.average_rate:
            frame_dur = 1.0 / float(vs.average_rate)
        n = len(set(pts))
        duration = last - first + frame_dur
        if vs.duration:   # the container's own figure (what ffprobe shows) when it is consistent
            declared = float(vs.duration * tb) - (first - float((vs.start_time or 0) * tb))
            if last - first < declared <= last - first + 2 * max(frame_dur, typical):
                duration = declared
        rate = (n / duration) if duration > 0 else float(vs.average_rate or 0)
        return VideoInfo(path=str(path), container=c.format.name, video_codec=vs.codec_context.name,
                         width=int(vs.codec_context.width), height=int(vs.codec_context.height),
                         frame_rate=float(vs.average_rate) if vs.average_rate else rate, frame_count=n,
                         start=first, duration=duration, has_audio=bool(c.streams.audio),
                         variable_frame_rate=vfr,
                         frame_interval_range=(float(intervals.min()) if intervals.size else 0.0,
                                               float(intervals.max()) if intervals.size else 0.0))


def check_frame_rate(info: VideoInfo, allow_vfr: bool = False) -> None:
    """Variable frame rate is refused unless the user opts in.

    The analysis and the mux work on timestamps, so VFR input does stay in sync; but players, editors
    and scene cut times become ambiguous, so the default is to ask for a constant-rate copy first.
    """
    if info.variable_frame_rate and not allow_vfr:
        lo, hi = info.frame_interval_range
        raise InputError(
            f"{info.path} has a variable frame rate (frames {lo * 1000:.1f} to {hi * 1000:.1f} ms apart). "
            "Convert it to constant frame rate first, e.g. `ffmpeg -i in.mp4 -fps_mode cfr -r 25 "
            "-c:a copy out.mp4`, or allow it (--allow-vfr / allow_vfr=True): timestamps are used "
            "throughout, so the soundtrack still follows the frames.")


# ---------------------------------------------------------------- the audio track
def decode_audio_track(container, stream, t0: float, rate: int, samples: int) -> np.ndarray:
    """``stream`` as stereo float32 [2, samples] at ``rate``, aligned so index 0 is the first video frame
    (``t0``): the clock the scenes and the muxer use. Audio before the first frame is dropped, a gap is silence."""
    import av

    out = np.zeros((2, samples), dtype=np.float32)
    rs = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
    pos = None

    def place(frames) -> None:
        nonlocal pos
        for r in frames:
            a = r.to_ndarray()
            a0, a1 = max(pos, 0), min(pos + a.shape[1], samples)
            if a1 > a0:
                out[:, a0:a1] = a[:, a0 - pos:a1 - pos]
            pos += a.shape[1]

    for fr in container.decode(stream):
        if pos is None:
            start = (fr.pts * float(fr.time_base)) if fr.pts is not None else 0.0
            pos = int(round((start - t0) * rate))
        place(rs.resample(fr))
    if pos is not None:
        place(rs.resample(None))
    return out


def require_audio_track(info: VideoInfo) -> VideoInfo:
    if not info.has_audio:
        raise InputError(f"{info.path} has no audio track: there is no sound to learn from; give a video with sound.")
    return info


def read_audio_track(path: PathLike) -> tuple[np.ndarray, int, VideoInfo]:
    """The first audio track of a video at its own rate, on the video's clock and as long as the video:
    ([2, S] float32, rate, info). Errors name the file: no audio track, a corrupt stream."""
    import av

    info = require_audio_track(probe_video(path))
    with _open(path) as c:
        st = c.streams.audio[0]
        rate = int(st.codec_context.sample_rate or st.rate or 0)
        if rate <= 0:
            raise InputError(f"{path}: its audio track declares no sample rate.")
        try:
            wave = decode_audio_track(c, st, info.start, rate, int(round(info.duration * rate)))
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: the audio track is corrupt ({e}).") from e
    return wave, rate, info


# ---------------------------------------------------------------- scene detection
def _thumb(frame, size: tuple[int, int]) -> np.ndarray:
    return frame.to_ndarray(width=size[0], height=size[1], format="gray").astype(np.float32)


def _rgb(frame, max_side: int) -> np.ndarray:
    w, h = frame.width, frame.height
    s = min(1.0, max_side / max(w, h))
    w2, h2 = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    return frame.to_ndarray(width=w2, height=h2, format="rgb24")


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference in 0..1 (robust and cheap; hard cuts score > 0.15)."""
    return float(np.abs(a - b).mean() / 255.0)


def split_long(start: float, end: float, max_seconds: float) -> list[tuple[float, float]]:
    """Split [start, end) into the fewest equal parts no longer than ``max_seconds``."""
    d = end - start
    if max_seconds <= 0 or d <= max_seconds + 1e-9:
        return [(start, end)]
    n = math.ceil(d / max_seconds - 1e-9)
    edges = [start + d * k / n for k in range(n + 1)]
    edges[-1] = end
    return list(zip(edges[:-1], edges[1:]))


def merge_short(cuts: list[float], duration: float, min_seconds: float) -> list[float]:
    """Drop cut points that would leave a scene shorter than ``min_seconds``."""
    out: list[float] = []
    prev = 0.0
    for c in cuts:
        if c - prev >= min_seconds and duration - c >= min_seconds:
            out.append(c)
            prev = c
    return out


def detect_scenes(path: PathLike, *, max_scene_seconds: float = 27.0, threshold: float = 0.12,
                  analysis_fps: float = 4.0, min_scene_seconds: float = 1.0, keyframes: int = 1,
                  keyframe_size: int = 448, allow_vfr: bool = False,
                  hooks: Optional[Hooks] = None) -> SceneList:
    """Find shots by frame difference and return scenes with keyframes.

    ``max_scene_seconds`` should be the DiT clip length minus the crossfade (see
    :func:`audiostory_core.dubbing.max_scene_seconds`). ``threshold`` is the mean grey-level change
    (0..1) between two samples that counts as a cut.
    """
    hooks = as_hooks(hooks)
    if analysis_fps <= 0:
        raise InputError("analysis_fps must be > 0.")
    if keyframes < 1:
        raise InputError("keyframes must be at least 1.")
    info = probe_video(path)
    check_frame_rate(info, allow_vfr)
    thumb = (64, 36) if info.width >= info.height else (36, 64)
    step = 1.0 / analysis_fps
    cap = max(4, 4 * keyframes)

    cuts: list[float] = []
    # keyframe candidates of the current shot: (time, rgb); decimated when it grows past ``cap``
    shots: list[list[tuple[float, np.ndarray]]] = [[]]
    stride = [1]
    counter = [0]
    pending: list = []          # frames decoded since the last sample (for exact cut placement)
    last_thumb: Optional[np.ndarray] = None
    next_sample = 0.0
    decoded = 0

    def add_candidate(t: float, frame) -> None:
        counter[0] += 1
        if (counter[0] - 1) % stride[0]:
            return
        buf = shots[-1]
        buf.append((t, _rgb(frame, keyframe_size)))
        if len(buf) > cap:
            del buf[1::2]
            stride[0] *= 2

    import av

    with _open(path) as c:
        vs = _video_stream(c, path)
        vs.thread_type = "AUTO"
        tb = float(vs.time_base)
        try:
            for frame in c.decode(vs):
                if frame.pts is None:
                    continue
                t = frame.pts * tb - info.start
                decoded += 1
                if decoded % 64 == 0:
                    hooks.check()
                    hooks.report("scenes", min(int(t), int(info.duration)), max(1, int(info.duration)))
                if t + 1e-9 < next_sample and last_thumb is not None:
                    pending.append((t, frame))
                    if len(pending) > 64:      # safety bound for very high frame rates
                        pending.pop(0)
                    continue
                th = _thumb(frame, thumb)
                if last_thumb is not None and _diff(th, last_thumb) > threshold:
                    # place the cut on the first in-between frame that already looks like the new shot
                    cut_t = t
                    for pt, pf in pending:
                        pth = _thumb(pf, thumb)
                        if _diff(pth, th) < _diff(pth, last_thumb):
                            cut_t = pt
                            break
                    cuts.append(cut_t)
                    shots.append([])
                    stride[0], counter[0] = 1, 0
                pending.clear()
                add_candidate(t, frame)
                last_thumb = th
                next_sample = t + step * 0.999
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: decoding failed at frame {decoded} ({e}).") from e
    if decoded == 0:
        raise InputError(f"{path}: no video frame could be decoded. Nothing to dub.")

    kept = merge_short(cuts, info.duration, min_scene_seconds)
    # regroup keyframe candidates by the kept cuts
    bounds = [0.0] + kept + [info.duration]
    flat = [x for shot in shots for x in shot]
    scenes: list[Scene] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for s, e in split_long(a, b, max_scene_seconds):
            cands = [x for x in flat if s - 1e-6 <= x[0] < e - 1e-6]
            if not cands:   # a tiny part: use the nearest candidate in time
                mid = (s + e) / 2
                cands = [min(flat, key=lambda x: abs(x[0] - mid))]
            picks = _spread(cands, keyframes)
            scenes.append(Scene(start=s, end=e, keyframe_times=[p[0] for p in picks],
                                keyframes=[p[1] for p in picks]))
    hooks.report("scenes", 1, 1)
    return SceneList(info=info, scenes=scenes)


def _spread(cands: list[tuple[float, Any]], k: int) -> list[tuple[float, Any]]:
    """``k`` candidates evenly spread over the scene (centred: the middle frame when k == 1)."""
    n = len(cands)
    if n <= k:
        return list(cands)
    return [cands[min(n - 1, int((i + 0.5) * n / k))] for i in range(k)]


# ---------------------------------------------------------------- user edits
def scenes_from_dict(d: Any, info: VideoInfo, max_scene_seconds: Optional[float] = None) -> SceneList:
    """Scenes typed or edited by a user: ``{"scenes": [{"start", "end", "caption"}, ...]}``.

    They must tile the video: start at 0, be contiguous and end at the video length (within one frame).
    """
    if isinstance(d, list):
        d = {"scenes": d}
    if not isinstance(d, dict) or not isinstance(d.get("scenes"), list) or not d["scenes"]:
        raise InputError('Scenes JSON must be {"scenes": [{"start": s, "end": s, "caption": "..."}, ...]}.')
    tol = 1.0 / max(info.frame_rate, 1.0) + 1e-6
    out: list[Scene] = []
    prev = 0.0
    for i, s in enumerate(d["scenes"]):
        try:
            a, b = float(s["start"]), float(s["end"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"scenes[{i}] needs numeric 'start' and 'end' seconds.") from e
        if abs(a - prev) > tol:
            raise InputError(f"scenes[{i}] starts at {a:.3f} s but the previous scene ends at {prev:.3f} s; "
                             "scenes must be contiguous.")
        if b <= a:
            raise InputError(f"scenes[{i}] ends ({b:.3f} s) before it starts ({a:.3f} s).")
        if max_scene_seconds is not None and b - a > max_scene_seconds + 1e-6:
            raise InputError(f"scenes[{i}] lasts {b - a:.2f} s; one clip holds at most "
                             f"{max_scene_seconds:.2f} s. Split it.")
        cap = s.get("caption", "")
        if not isinstance(cap, str):
            raise InputError(f"scenes[{i}].caption must be a string.")
        out.append(Scene(start=prev, end=b, caption=cap.strip()))
        prev = b
    if abs(prev - info.duration) > tol:
        raise InputError(f"The scenes end at {prev:.3f} s but the video lasts {info.duration:.3f} s.")
    out[-1].end = info.duration
    return SceneList(info=info, scenes=out)
