"""Put the bundled example media where ComfyUI's LoadVideo/LoadAudio find it, so the shipped mux, dubbing
and continuation workflows run as loaded on a fresh install (``example_media/``, CC0, generated).

Called once from the pack's ``__init__`` inside ComfyUI. Files already in the input folder are never
overwritten; copies are written under a temporary name and renamed, so a failed copy leaves nothing.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .audiostory_core.atomic import atomic_file

log = logging.getLogger("AudioStory")

EXAMPLES_DIR = Path(__file__).resolve().parent / "example_media"
EXAMPLE_FILES = ("audiostory_example.mp4", "audiostory_continue_example.wav")
# The training example folder (AudioStory Training Data lists folders of input/ holding a manifest).
EXAMPLE_DATASET = "audiostory_train_example"
EXAMPLE_DATASET_FILES = ("rain.wav", "beep.wav", "chirp.wav", "captions.jsonl")   # the manifest last


def _copy_missing(names: tuple[str, ...], src_dir: Path, dst_dir: Path) -> list[Path]:
    """Copy each of ``names`` that ``dst_dir`` lacks, in order, atomically; returns the files written."""
    written = []
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        if dst.exists() or not src.is_file():
            continue
        with atomic_file(dst) as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        written.append(dst)
    return written


def install_examples(input_dir: Path, examples_dir: Path = EXAMPLES_DIR) -> list[Path]:
    """Copy each missing example into ``input_dir``; returns the files written."""
    return _copy_missing(EXAMPLE_FILES, Path(examples_dir), Path(input_dir))


def install_example_dataset(input_dir: Path, examples_dir: Path = EXAMPLES_DIR) -> list[Path]:
    """Copy the training example folder when ``input_dir`` has no folder of that name; the manifest is
    copied last, so an interrupted copy is never listed as a data set (it has no manifest yet)."""
    src_dir, dst_dir = examples_dir / EXAMPLE_DATASET, Path(input_dir) / EXAMPLE_DATASET
    if not src_dir.is_dir() or (dst_dir / EXAMPLE_DATASET_FILES[-1]).exists() or \
            (dst_dir.exists() and not dst_dir.is_dir()):
        return []
    dst_dir.mkdir(parents=True, exist_ok=True)
    return _copy_missing(EXAMPLE_DATASET_FILES, src_dir, dst_dir)


def install_into_comfyui_input() -> None:
    """The same, into ``folder_paths.get_input_directory()``; a read-only input folder only logs a warning."""
    import folder_paths

    try:
        input_dir = Path(folder_paths.get_input_directory())
        for path in install_examples(input_dir) + install_example_dataset(input_dir):
            log.info("AudioStory: copied example media to %s", path)
    except OSError as e:
        log.warning("AudioStory: could not copy the example media into the input folder (%s); the mux, dubbing "
                    "and continuation example workflows need %s there (the training one %s/).", e,
                    ", ".join(EXAMPLE_FILES), EXAMPLE_DATASET)
