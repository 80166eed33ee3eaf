"""The consistency-memory node's modes and memory files in ComfyUI's output folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..audiostory_core.errors import InputError
from ..audiostory_core.tasks.memory import StoryMemory


MEMORY_MODES = ("new", "pass_through", "load", "save")


def memory_file(base: str, rel: str, suffix: str = ".safetensors") -> Path:
    """Resolve a memory path relative to ``base`` (the ComfyUI output folder); refuse escapes."""
    if not isinstance(rel, str) or not rel.strip():
        raise InputError("The memory path is empty; use e.g. 'audiostory/memory/my_story'.")
    rel = rel.strip()
    if os.path.isabs(rel) or re.match(r"^[A-Za-z]:", rel):
        raise InputError(f"Use a path relative to the ComfyUI output folder, not {rel!r}.")
    p = (Path(base) / rel)
    if p.suffix != suffix:
        p = p.with_name(p.name + suffix)
    base_r, p_r = Path(base).resolve(), p.resolve()
    if base_r != p_r and base_r not in p_r.parents:
        raise InputError(f"The memory path {rel!r} leaves the output folder.")
    return p


def memory_for(mode: str, memory: Optional[StoryMemory], path: Optional[Path], window: int,
               strength: float) -> StoryMemory:
    """The memory node's behaviour (file writing is done here too, atomically)."""
    if mode not in MEMORY_MODES:
        raise InputError(f"mode must be one of {MEMORY_MODES}, got {mode!r}")
    if mode == "new":
        return StoryMemory(window=int(window), strength=float(strength))
    if mode == "load":
        if path is None:
            raise InputError("mode 'load' needs a path.")
        return StoryMemory.load(path).with_settings(window, strength)
    if memory is None:
        raise InputError(f"mode {mode!r} needs a memory input (connect the memory output of "
                         "AudioStoryEventTokens or of another memory node).")
    mem = memory.with_settings(window, strength)
    if mode == "save":
        if path is None:
            raise InputError("mode 'save' needs a path.")
        mem.save(path)
    return mem
