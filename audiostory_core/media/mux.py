"""Put a generated soundtrack onto a video with PyAV: the video stream is copied packet for packet
(no re-encode, no quality loss), only the audio is encoded (AAC in MP4/MOV, Opus in WebM/MKV).

Sync: the soundtrack's first sample is placed at the first video frame's timestamp, and packets are
interleaved by time while streaming (memory stays flat for long videos). The output is written to a
temporary file next to ``out_path`` and renamed at the end, so a failure never leaves half a file.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..atomic import atomic_file
from ..errors import InputError

PathLike = Union[str, Path]
FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
DEFAULT_CODEC = {"mp4": "aac", "mov": "aac", "matroska": "libopus", "webm": "libopus"}
WEBM_VIDEO = {"vp8", "vp9", "av1"}
POLICIES = ("pad", "trim", "keep_video")


def _encoder_rate(codec, wanted: int) -> int:
    rates = getattr(codec, "audio_rates", None)
    if not rates:
        return wanted
    rates = sorted(int(r) for r in rates)
    return wanted if wanted in rates else min(rates, key=lambda r: (r < wanted, abs(r - wanted)))


def mux_audio_onto_video(video_path: PathLike, audio: torch.Tensor, sample_rate: int, out_path: PathLike,
                         policy: str = "pad", audio_codec: Optional[str] = None, existing_audio: str = "replace",
                         mix_gain_db: float = -12.0) -> Path:
    """Copy the video stream of ``video_path`` and add ``audio`` [C, S] (C = 1 or 2) as its only audio track.

    ``policy``: ``pad`` pads/trims the audio to exactly the video length, ``trim`` only trims it,
    ``keep_video`` writes the audio as given. ``existing_audio='mix'`` keeps the original audio under the
    new one, attenuated by ``mix_gain_db``. Returns ``out_path``.
    """
    import av

    from .video import decode_audio_track, probe_video

    if policy not in POLICIES:
        raise InputError(f"policy must be one of {POLICIES}, got {policy!r}.")
    if existing_audio not in ("replace", "mix"):
        raise InputError(f"existing_audio must be 'replace' or 'mix', got {existing_audio!r}.")
    out_path = Path(out_path)
    fmt = FORMATS.get(out_path.suffix.lower())
    if fmt is None:
        raise InputError(f"Output {out_path.name}: use one of {', '.join(FORMATS)} (AAC in MP4/MOV, Opus in MKV/WebM).")
    if out_path.resolve() == Path(video_path).resolve():
        raise InputError("The output must not overwrite the input video.")
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    if audio.dim() != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise InputError(f"The soundtrack must be [channels(1|2), samples], got {tuple(audio.shape)}.")
    info = probe_video(video_path)
    t0 = info.start

    codec_name = audio_codec or DEFAULT_CODEC[fmt]
    try:
        codec = av.codec.Codec(codec_name, "w")
    except Exception as e:
        raise InputError(f"Audio encoder {codec_name!r} is not available in this FFmpeg build ({e}).") from e
    rate = _encoder_rate(codec, int(sample_rate))
    wave = audio.detach().float().cpu()
    if wave.shape[0] == 1:
        wave = wave.expand(2, -1)
    if rate != sample_rate:
        from ..stages.audio import resample

        wave = resample(wave.contiguous(), int(sample_rate), rate)
    target = int(round(info.duration * rate))
    if policy == "pad" or (policy == "trim" and wave.shape[1] > target):
        wave = wave[:, :target] if wave.shape[1] >= target else torch.nn.functional.pad(wave, (0, target - wave.shape[1]))
    data = wave.numpy().astype(np.float32)

    with av.open(str(video_path)) as src:
        vs = src.streams.video[0]
        if fmt == "webm" and vs.codec_context.name not in WEBM_VIDEO:
            raise InputError(f"WebM holds only VP8/VP9/AV1 video, this video is {vs.codec_context.name}; "
                             "write .mkv or .mp4 instead (the video is copied, not re-encoded).")
        if existing_audio == "mix" and src.streams.audio:
            old = decode_audio_track(src, src.streams.audio[0], t0, rate, data.shape[1])
            data = data + old * (10.0 ** (mix_gain_db / 20.0))
            peak = float(np.abs(data).max())
            if peak > 1.0:
                data = data / peak

    try:
        with atomic_file(out_path) as f, av.open(str(video_path)) as src, av.open(f, "w", format=fmt) as dst:
            vs = src.streams.video[0]
            ov = dst.add_stream_from_template(vs)
            oa = dst.add_stream(codec_name, rate=rate)
            oa.layout = "stereo"
            oa.codec_context.time_base = Fraction(1, rate)
            if codec_name == "aac":
                oa.bit_rate = 192000
            packets = _encode_audio(oa, data, rate, int(round(t0 * rate)))
            k = 0
            for pkt in src.demux(vs):
                if pkt.dts is None and pkt.pts is None:
                    continue      # flush packet
                t = float((pkt.dts if pkt.dts is not None else pkt.pts) * pkt.time_base)
                while k < len(packets) and float(packets[k].pts * packets[k].time_base) <= t:
                    dst.mux(packets[k])
                    k += 1
                pkt.stream = ov
                dst.mux(pkt)
            for p in packets[k:]:
                dst.mux(p)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"Writing {out_path} failed: {e}") from e
    return out_path


def _encode_audio(stream, data: np.ndarray, rate: int, start_pts: int) -> list:
    """Encode [2, S] float32 into packets (kept in memory: compressed audio is small)."""
    import av

    fs = stream.codec_context.frame_size or 1024
    out = []
    for k in range(0, data.shape[1], fs):
        chunk = np.ascontiguousarray(data[:, k:k + fs])
        fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        fr.sample_rate = rate
        fr.pts = start_pts + k
        fr.time_base = Fraction(1, rate)
        out.extend(stream.encode(fr))
    out.extend(stream.encode(None))
    return out
