"""Stage 4, decode and stitch: VAE decode, trim to durations, resample, crossfade, write.

Reference: trim each clip to ``int(seconds * 44100)`` samples, resample to 32 kHz, then join with a
3 s linear crossfade (``smooth_concatenate`` of the official script: fade-out 1->0 and fade-in 0->1
with ``linspace`` including both ends, hard join when a piece is shorter than the fade).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import torch

from ..atomic import atomic_file
from ..errors import InputError
from ..progress import Hooks, as_hooks
from ..validation import check_finite

AUDIO_CAUSE = "VAE weights that are not finite or latents out of range (with fp16, try --dtype fp32 or bf16)"


@torch.no_grad()
def decode_clips(vae, latents: torch.Tensor, seconds: Sequence[float], hooks: Optional[Hooks] = None,
                 chunk: int = 1) -> list[torch.Tensor]:
    """Decode ``[E, T, 64]`` latents clip by clip and trim each to its duration: list of [C, S] fp32 CPU."""
    hooks = as_hooks(hooks)
    sr = int(vae.config.sampling_rate)
    dtype = next(vae.parameters()).dtype
    dev = next(vae.parameters()).device
    out = []
    e = latents.shape[0]
    for i in range(0, e, chunk):
        hooks.check()
        z = latents[i:i + chunk].transpose(2, 1).to(dev, dtype)
        wav = vae.decode(z).sample.float().cpu()
        for j in range(wav.shape[0]):
            out.append(wav[j, :, : int(seconds[i + j] * sr)])
        hooks.report("decode", min(i + chunk, e), e)
    return out


def resample(wave: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    if orig_sr == target_sr:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, orig_sr, target_sr)


def resampled_length(samples: int, orig_sr: int, target_sr: int) -> int:
    """Length :func:`resample` gives ``samples`` samples: ``ceil(samples * target / orig)`` (torchaudio's rule)."""
    return int(samples) if orig_sr == target_sr else -(-int(samples) * int(target_sr) // int(orig_sr))


def clip_samples(seconds: float, vae_sr: int, sample_rate: int) -> int:
    """Samples of one decoded clip after the decode's trim (``int(seconds * vae_sr)``) and the resample."""
    return resampled_length(int(seconds * vae_sr), vae_sr, sample_rate)


def crossfade_concat(clips: Sequence[torch.Tensor], sample_rate: int, seconds: float = 3.0,
                     crossfade_curve: str = "linear") -> torch.Tensor:
    """Join clips [C, S] with a crossfade of ``seconds``; total = sum(len) - (n-1) * fade samples.

    ``seconds`` and ``crossfade_curve`` are trusted (``AudioStoryPipeline.decode`` and the nodes' widget
    limits check them)."""
    if not clips:
        return torch.empty(0, dtype=torch.float32)
    proc = [c.unsqueeze(0) if c.dim() == 1 else c for c in clips]
    proc = [c.to(torch.float32) for c in proc]
    n = max(0, int(seconds * sample_rate))
    result = proc[0]
    if n == 0:
        return torch.cat(proc, dim=1)
    for nxt in proc[1:]:
        if result.shape[1] < n or nxt.shape[1] < n:
            result = torch.cat([result, nxt], dim=1)
            continue
        if crossfade_curve == "linear":
            fade_out = torch.linspace(1.0, 0.0, n).unsqueeze(0)
            fade_in = torch.linspace(0.0, 1.0, n).unsqueeze(0)
        else:  # equal power keeps loudness constant for uncorrelated material
            t = torch.linspace(0.0, 1.0, n).unsqueeze(0) * (math.pi / 2)
            fade_out, fade_in = torch.cos(t), torch.sin(t)
        merged = result[:, -n:] * fade_out + nxt[:, :n] * fade_in
        result = torch.cat([result[:, :-n], merged, nxt[:, n:]], dim=1)
    return result


def write_wav_float32(f: BinaryIO, data, sample_rate: int) -> None:
    """A float32 WAV (WAVE_FORMAT_IEEE_FLOAT, fmt + fact + data) from [S, C] numpy data into an open binary file.

    Written by hand instead of libsndfile, whose PEAK chunk carries a timestamp: this way the same
    audio always gives the same bytes. Any WAV reader (libsndfile, FFmpeg, Python's readers) opens it.
    """
    import struct

    import numpy as np

    data = np.ascontiguousarray(data, dtype="<f4")
    frames, channels = data.shape
    payload = data.tobytes()
    if len(payload) > 0xFFFFFFFF - 64:
        raise InputError(f"{len(payload) / 2**30:.1f} GiB of audio is too large for WAV "
                         "(4 GiB limit); write .flac or a shorter story.")
    fmt = struct.pack("<HHIIHHH", 3, channels, int(sample_rate), int(sample_rate) * channels * 4, channels * 4, 32, 0)
    fact = struct.pack("<I", frames)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", len(fact)) + fact
            + b"data" + struct.pack("<I", len(payload)))
    f.write(b"RIFF" + struct.pack("<I", len(body) + len(payload)) + body)
    f.write(payload)


def write_flac(file: BinaryIO, wave: torch.Tensor, sample_rate: int, metadata: Optional[dict] = None) -> None:
    """24-bit FLAC of [C, S] float audio (clipped to full scale) into an open binary file, with ``metadata``
    as vorbis comments (ComfyUI keeps 'prompt' and 'workflow' there). The one FLAC writer of the project."""
    import av
    import numpy as np

    data = np.ascontiguousarray(wave.detach().float().cpu().clamp(-1.0, 1.0).numpy())
    layout = "mono" if data.shape[0] == 1 else "stereo"
    with av.open(file, mode="w", format="flac") as out:
        for k, v in (metadata or {}).items():
            out.metadata[k] = v
        stream = out.add_stream("flac", rate=int(sample_rate), layout=layout)
        stream.codec_context.format = "s32"          # FLAC stores it as 24-bit samples
        for start in range(0, data.shape[1], 65536):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 65536]), format="fltp",
                                               layout=layout)
            frame.sample_rate = int(sample_rate)
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_audio(path: str | Path, wave: torch.Tensor, sample_rate: int, fmt: Optional[str] = None,
                metadata: Optional[dict] = None) -> Path:
    """Write [C, S] float audio atomically (temp file + rename): WAV float32 or FLAC 24-bit (with
    ``metadata`` as its tags; WAV carries none).

    Non-finite audio is refused (nothing is written); the same audio always gives the same bytes.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "wav").lower()
    if fmt not in ("wav", "flac"):
        raise InputError(f"Unsupported audio format {fmt!r}; use wav or flac.")
    check_finite(wave, "decoded audio", AUDIO_CAUSE)
    with atomic_file(path) as f:
        if fmt == "wav":
            write_wav_float32(f, wave.detach().cpu().float().numpy().T, sample_rate)
        else:
            write_flac(f, wave, sample_rate, metadata)
    return path


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read an audio file to ([C, S] float32, sample_rate) with a clear error for corrupt files."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise InputError(f"Cannot read audio file {path}: {e}") from e
    return torch.from_numpy(data.T.copy()), int(sr)
