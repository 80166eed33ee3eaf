"""Saving audio from a node: safe file-name prefixes and FLAC with the prompt/workflow as metadata.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..audiostory_core.atomic import atomic_file
from ..audiostory_core.errors import InputError


SAVE_FORMATS = ("wav", "flac")


def safe_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip():
        return "audio/AudioStory"
    prefix = prefix.strip().replace("\\", "/")
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise InputError(f"filename_prefix {prefix!r} must stay inside the output folder.")
    return prefix


def write_flac_with_metadata(path: Path, wave: torch.Tensor, sample_rate: int, metadata: dict) -> Path:
    """FLAC (24-bit) with vorbis comments (ComfyUI stores 'prompt' and 'workflow' there), written atomically."""
    import av
    import numpy as np

    path = Path(path)
    wave = wave.detach().float().cpu().clamp(-1.0, 1.0)
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    # a hidden temp file (the output list skips it), written through its file object
    with atomic_file(path) as f:
        with av.open(f, mode="w", format="flac") as out:
            for k, v in metadata.items():
                out.metadata[k] = v
            stream = out.add_stream("flac", rate=int(sample_rate), layout=layout)
            stream.codec_context.format = "s32"
            data = np.ascontiguousarray(wave.numpy())
            for start in range(0, data.shape[1], 65536):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 65536]),
                                                   format="fltp", layout=layout)
                frame.sample_rate = int(sample_rate)
                frame.pts = start
                for p in stream.encode(frame):
                    out.mux(p)
            for p in stream.encode(None):
                out.mux(p)
    return path


def workflow_metadata(prompt: Any, extra_pnginfo: Any) -> dict:
    meta = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for k, v in extra_pnginfo.items():
            meta[k] = json.dumps(v)
    return meta
