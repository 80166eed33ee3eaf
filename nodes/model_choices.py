"""The auxiliary models a node may load, as combo choices of the folders registered with ``folder_paths``
(``models/audiostory/`` and, for Whisper, core's ``models/audio_encoders/``): a prompt picks a name, never
a path or a Hugging Face id, and nothing is ever downloaded from a node."""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..audiostory_core.models.folders import CLAP, VLM, WHISPER, ModelKind, model_choices, resolve_model_choice
from .common import MODEL_FOLDER

FOLDERS = {CLAP: (MODEL_FOLDER,), WHISPER: (MODEL_FOLDER, "audio_encoders"), VLM: (MODEL_FOLDER,)}
"""The folder_paths keys each kind is looked up in, in order."""


def _bases(kind: ModelKind) -> list[str]:
    out: list[str] = []
    for key in FOLDERS[kind]:
        try:
            out += folder_paths.get_folder_paths(key)
        except KeyError:   # a key this ComfyUI does not register
            continue
    return out


def where(kind: ModelKind) -> str:
    """The folders to put a ``kind`` model in, as a user sees them (relative to ComfyUI)."""
    return " or ".join(f"ComfyUI/models/{key}/" for key in FOLDERS[kind])


def choices(kind: ModelKind) -> list[str]:
    return model_choices(_bases(kind), kind)


def combo(name: str, kind: ModelKind, tooltip: str) -> io.Combo.Input:
    """The combo for a ``kind`` model (the widget keeps its name and position where it was a string)."""
    options = choices(kind)
    return io.Combo.Input(name, options=options, default=options[0] if options else None,
                          tooltip=f"{tooltip} A folder in {where(kind)} holding a {kind.what} "
                                  f"(e.g. {kind.default}/); refresh after adding one.")


def resolve(kind: ModelKind, name: object) -> Path:
    """The chosen folder, checked again when the node runs (the folders may have changed since validation)."""
    return resolve_model_choice(_bases(kind), name, kind, where(kind))
