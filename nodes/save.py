"""Saving audio from a node: safe file-name prefixes and the prompt/workflow as FLAC metadata (written by
the core's one FLAC writer, ``stages.audio.write_audio``)."""
from __future__ import annotations

import json
from typing import Any

from ..audiostory_core.errors import InputError


SAVE_FORMATS = ("wav", "flac")


def safe_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip():
        return "audio/AudioStory"
    prefix = prefix.strip().replace("\\", "/")
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise InputError(f"filename_prefix {prefix!r} must stay inside the output folder.")
    return prefix


def workflow_metadata(prompt: Any, extra_pnginfo: Any) -> dict:
    meta = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for k, v in extra_pnginfo.items():
            meta[k] = json.dumps(v)
    return meta
