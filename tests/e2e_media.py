"""Small synthetic media for the node tests (PyAV only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_video(path: Path, seconds: float = 2.0, fps: int = 10, size: int = 64, with_audio: bool = False) -> Path:
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=44100, layout="stereo") if with_audio else None
        for i in range(int(seconds * fps)):
            img = np.full((size, size, 3), (i * 20) % 255, dtype=np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        if a is not None:
            t = np.arange(int(seconds * 44100)) / 44100
            x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            data = np.stack([x, x])
            for k in range(0, data.shape[1], 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, k:k + 1024]), format="fltp",
                                                layout="stereo")
                fr.sample_rate = 44100
                fr.pts = k
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


def make_wav(path: Path, seconds: float = 4.0, rate: int = 44100) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    x = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    sf.write(str(path), np.stack([x, x], axis=1), rate)
    return Path(path)
