"""Synthetic test media written with PyAV: videos with hard cuts at known times, tones, silence."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# Distinct shots: a flat colour plus a moving bar, so shots differ strongly and frames within a shot a little.
SHOT_COLOURS = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (220, 200, 40), (150, 40, 160), (30, 160, 170)]


def shot_frame(shot: int, i: int, w: int, h: int) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = SHOT_COLOURS[shot % len(SHOT_COLOURS)]
    x = (i * 2) % max(1, w - 8)
    img[:, x:x + 8] = 255 - img[:, x:x + 8]
    return img


def write_video(path: Path, cuts: Sequence[float], duration: float, *, fps: int = 24, size=(96, 64),
                codec: str = "libx264", audio: bool = True, audio_codec: Optional[str] = None,
                audio_rate: int = 48000, frame_times: Optional[Sequence[float]] = None,
                shot_tones: Optional[Sequence[float]] = None) -> Path:
    """A video whose shot changes exactly at ``cuts`` (seconds). ``frame_times`` makes it VFR.

    The audio is a 440 Hz tone, or with ``shot_tones`` a tone per shot (shot k, from cut k-1 to cut k, at
    ``shot_tones[k]`` Hz), changing at the same instants as the picture."""
    import av

    path = Path(path)
    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "bf": "0"}
        if frame_times is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        ast = None
        if audio:
            ac = audio_codec or ("libopus" if path.suffix in (".webm", ".mkv") else "aac")
            ast = c.add_stream(ac, rate=audio_rate)
            ast.layout = "stereo"
        times = list(frame_times) if frame_times is not None else [i / fps for i in range(int(round(duration * fps)))]
        for i, t in enumerate(times):
            shot = sum(1 for cut in cuts if t >= cut - 1e-9)
            frame = av.VideoFrame.from_ndarray(shot_frame(shot, i, w, h), format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(t * 1000))
                frame.time_base = Fraction(1, 1000)
            for pkt in vs.encode(frame):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if ast is not None:
            n = int(duration * audio_rate)
            t = np.arange(n) / audio_rate
            freq = np.full(n, 440.0)
            if shot_tones is not None:
                freq = np.array(shot_tones, dtype=np.float64)[np.searchsorted(np.asarray(cuts), t, side="right")]
            tone = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            data = np.stack([tone, tone])
            fs = ast.codec_context.frame_size or 1024
            for k in range(0, n, fs):
                chunk = np.ascontiguousarray(data[:, k:k + fs])
                fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                fr.sample_rate = audio_rate
                fr.pts = k
                for pkt in ast.encode(fr):
                    c.mux(pkt)
            for pkt in ast.encode():
                c.mux(pkt)
    return path


def write_audio_only(path: Path, seconds: float = 2.0, rate: int = 44100) -> Path:
    """A file with an audio stream and no video stream."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    return Path(path)


def tone(seconds: float, rate: int, channels: int = 2, freq: float = 330.0, amp: float = 0.3):
    """[C, S] float32 torch tensor of a sine tone with a slow tremolo (so it is not constant)."""
    import torch

    t = torch.arange(int(round(seconds * rate))) / rate
    x = amp * torch.sin(2 * torch.pi * freq * t) * (0.7 + 0.3 * torch.sin(2 * torch.pi * 1.5 * t))
    return x.unsqueeze(0).repeat(channels, 1).float()


def write_video_without_frames(path: Path) -> Path:
    """An MKV that declares a video stream but holds only audio packets (zero video frames)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=8000)
        a.layout = "mono"
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate, fr.pts = 8000, 0
        for pkt in list(a.encode(fr)) + list(a.encode()):
            c.mux(pkt)
    return Path(path)
