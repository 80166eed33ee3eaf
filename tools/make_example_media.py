"""Write the pack's bundled example media (``example_media/``), generated here so no licence of a third party
applies: a 4 s 320x180 video with a hard cut at 2 s and a 440 Hz AAC track, a 4 s stereo 44.1 kHz WAV,
and a three-clip training set with captions (``audiostory_train_example/``).

    python tools/make_example_media.py          # rewrites example_media/*.mp4 and *.wav

The shipped workflows (mux, dubbing, continuation) load these names; ``install_examples.py`` copies them into
ComfyUI's input folder. tests/test_comfyui_e2e.py relies on the cut time and the lengths written here.
It also draws the registry icon, ``assets/icon.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

VIDEO_NAME, VIDEO_CUTS, VIDEO_SECONDS, VIDEO_SIZE = "audiostory_example.mp4", [2.0], 4.0, (320, 180)
AUDIO_NAME, AUDIO_SECONDS, AUDIO_RATE = "audiostory_continue_example.wav", 4.0, 44100
# The training example (the "Train on your sounds" template): short mono clips and their captions.
TRAIN_DIR, TRAIN_MANIFEST, TRAIN_RATE, TRAIN_SECONDS = "audiostory_train_example", "captions.jsonl", 22050, 1.0
TRAIN_CLIPS = (("rain.wav", "soft rain falls on a tin roof"), ("beep.wav", "a steady electronic beep"),
               ("chirp.wav", "a small bird chirps twice"))


def make_training_set(folder: Path) -> list[Path]:
    """Three 1 s mono 16-bit clips (filtered noise, a tone, two rising chirps) and ``captions.jsonl``."""
    import json

    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = int(TRAIN_RATE * TRAIN_SECONDS)
    t = np.arange(n) / TRAIN_RATE
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    chirp = np.zeros(n)
    for start in (0.15, 0.55):
        m = (t >= start) & (t < start + 0.2)
        tt = t[m] - start
        chirp[m] = np.sin(2 * np.pi * (2000 * tt + 6000 * tt ** 2)) * np.hanning(m.sum())
    waves = {"rain.wav": 0.3 * noise, "beep.wav": 0.2 * np.sin(2 * np.pi * 880 * t), "chirp.wav": 0.3 * chirp}
    written = []
    for name, _ in TRAIN_CLIPS:
        sf.write(str(folder / name), waves[name].astype(np.float32), TRAIN_RATE, subtype="PCM_16")
        written.append(folder / name)
    lines = [json.dumps({"audio": name, "caption": caption}) for name, caption in TRAIN_CLIPS]
    (folder / TRAIN_MANIFEST).write_text("\n".join(lines) + "\n")
    return written + [folder / TRAIN_MANIFEST]


def make_icon(path: Path = ROOT / "assets" / "icon.png", size: int = 400) -> Path:
    """The registry icon (``[tool.comfy] Icon``): a story of coloured waveform segments joined by crossfades."""
    import math

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (24, 28, 38))
    d = ImageDraw.Draw(img)
    colours = [(63, 120, 158), (136, 170, 136), (181, 139, 42), (161, 48, 155)]
    bars, margin = 44, 40
    step = (size - 2 * margin) / bars
    for i in range(bars):
        seg = min(len(colours) - 1, i * len(colours) // bars)
        amp = 0.15 + 0.85 * abs(math.sin(i * 0.55) * math.sin(i * 0.13 + 0.4))
        h = amp * (size * 0.6) / 2
        x = margin + i * step
        d.rounded_rectangle([x, size / 2 - h, x + step * 0.6, size / 2 + h], radius=2, fill=colours[seg])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "PNG", optimize=True)
    return path


def main(out: Path = ROOT / "example_media") -> int:
    from e2e_media import make_wav
    from synthetic_media import write_video

    out.mkdir(parents=True, exist_ok=True)
    write_video(out / VIDEO_NAME, cuts=VIDEO_CUTS, duration=VIDEO_SECONDS, size=VIDEO_SIZE)
    make_wav(out / AUDIO_NAME, seconds=AUDIO_SECONDS, rate=AUDIO_RATE)
    for name in (VIDEO_NAME, AUDIO_NAME):
        print(f"wrote {out / name} ({(out / name).stat().st_size} bytes)")
    for path in make_training_set(out / TRAIN_DIR):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    print("wrote", make_icon())
    return 0


if __name__ == "__main__":
    sys.exit(main())
