"""Auxiliary models (CLAP, Whisper, a vision-language model) picked by name from folders a server's owner
registered, never by a path: the names offered are the sub-folders that hold a model of that kind, and a
name resolves only to one of them, still inside its registered folder once symlinks are resolved.

This is what makes a ComfyUI prompt unable to reach any other file: a value that is not one of the listed
names (a path, ``..``, ``~``, an absolute path, a Hugging Face id) resolves to nothing, and the error names
the kind and the folders to put it in, never the value's path or whether it exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..errors import ModelFilesError

PathLike = Union[str, Path]
MAX_CONFIG_BYTES = 1 << 20      # a model's config.json (a few kB); larger files are not model folders


@dataclass(frozen=True)
class ModelKind:
    """One kind of auxiliary model: how its folder is recognised and how a user installs one."""

    what: str                                 # "CLAP model"
    fits: Callable[[dict], bool]              # does this config.json describe one?
    default: str                              # the folder name the README and `download` use
    install: str                              # how to get one (a command or a Hugging Face page)


CLAP = ModelKind("CLAP model", lambda c: c.get("model_type") == "clap", "clap-htsat-unfused",
                 "`python -m audiostory_core download --models <that folder> --only clap` "
                 "(or https://huggingface.co/laion/clap-htsat-unfused)")
WHISPER = ModelKind("Whisper model", lambda c: c.get("model_type") == "whisper", "whisper-large-v3",
                    "https://huggingface.co/openai/whisper-large-v3 (config.json, weights, preprocessor_config.json)")
VLM = ModelKind("vision-language model", lambda c: isinstance(c.get("vision_config"), dict), "Qwen2.5-VL-3B-Instruct",
                "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct (config.json, weights, processor files)")


def _config(folder: Path) -> Optional[dict]:
    """``folder/config.json`` as a dict, or None (missing, too large, unreadable, not JSON)."""
    try:
        with open(folder / "config.json", "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            return None
        cfg = json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _inside(path: Path, base: Path) -> bool:
    """``path`` (symlinks resolved) is ``base`` (resolved) or below it."""
    try:
        real, root = path.resolve(strict=True), base.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real != root and root in real.parents


def _candidates(bases: Sequence[PathLike], kind: ModelKind) -> dict[str, Path]:
    """name -> folder, for every sub-folder of ``bases`` holding a ``kind`` model (the first base wins)."""
    found: dict[str, Path] = {}
    for base in bases:
        base = Path(base)
        try:
            children = sorted(p for p in base.iterdir() if not p.name.startswith("."))
        except OSError:
            continue
        for child in children:
            if child.name in found or not _inside(child, base) or not child.is_dir():
                continue
            cfg = _config(child)
            if cfg is not None and kind.fits(cfg):
                found[child.name] = child
    return found


def model_choices(bases: Sequence[PathLike], kind: ModelKind) -> list[str]:
    """The names a user may pick for ``kind``: the default first when it is installed, then the others."""
    names = list(_candidates(bases, kind))
    return sorted(names, key=lambda n: (n != kind.default, n))


def _shown(name: object) -> str:
    """The value as the error may show it: a plain folder name only (never a path the user did not install)."""
    plain = isinstance(name, str) and 0 < len(name) <= 100 and name[0] not in ".~" and not any(
        c in name for c in "/\\:\x00")
    return repr(name) if plain else "the value given"


def resolve_model_choice(bases: Sequence[PathLike], name: object, kind: ModelKind,
                         where: Optional[str] = None) -> Path:
    """The folder of the choice ``name``, or a :class:`ModelFilesError` naming the choice and ``where`` to put
    a model. Only a listed name resolves, so nothing outside ``bases`` is ever opened or probed."""
    folder = _candidates(bases, kind).get(name) if isinstance(name, str) else None
    if folder is not None:
        return folder.resolve()
    where = where or ", ".join(str(Path(b)) for b in bases) or "models/audiostory"
    raise ModelFilesError(f"The {kind.what} {_shown(name)} is not one of the installed choices. Put a {kind.what} "
                          f"folder in {where} (e.g. {kind.default}/, from {kind.install}), then pick it from "
                          "the list (refresh the page after adding it).")
