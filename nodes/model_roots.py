"""Model roots under ComfyUI's ``models/audiostory`` folders: listing and resolving a chosen root.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..audiostory_core.models.config import find_audiostory_dir
from ..audiostory_core.errors import ModelFilesError


def list_model_roots(folders: Sequence[str]) -> list[str]:
    """Names of the sub-folders of ``folders`` that hold an AudioStory checkpoint (≤ 2 levels down)."""
    found: list[str] = []
    for base in folders:
        try:
            children = sorted(p for p in Path(base).iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            try:
                find_audiostory_dir(child)
            except ModelFilesError:
                continue
            if child.name not in found:
                found.append(child.name)
    return found


def resolve_model_root(folders: Sequence[str], name: str) -> Path:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ModelFilesError(f"Invalid model folder name {name!r}.")
    for base in folders:
        p = Path(base) / name
        if p.is_dir():
            return p
    where = ", ".join(str(Path(f)) for f in folders) or "models/audiostory"
    raise ModelFilesError(
        f"Model folder {name!r} was not found in {where}. Put the AudioStory model root there, e.g. "
        f"models/audiostory/{name}/AudioStory-3B/pytorch_model.bin (see the README 'Model files').")


def no_roots_message(folders: Sequence[str]) -> str:
    where = ", ".join(str(Path(f)) for f in folders) or "ComfyUI/models/audiostory"
    return (f"No AudioStory model found in {where}. Create a folder per model there, e.g. "
            "models/audiostory/AudioStory/ holding AudioStory-3B/ (config.yaml + pytorch_model.bin), "
            "Flux_detokenizer/, Qwen2.5-3B-Instruct/ and flan-t5-large/.")
