"""Fetch AudioStory's models into ComfyUI's ``models/audiostory/``, from ComfyUI's folder with ComfyUI's Python:

    python custom_nodes/comfyui-audiostory/download_models.py                 # the model root (about 20 GB)
    python custom_nodes/comfyui-audiostory/download_models.py --only vlm whisper

The model root goes to ``models/audiostory/AudioStory/``; CLAP, the VLM and Whisper (``--only clap vlm
whisper``) next to it in ``models/audiostory/``, where the nodes look. ``--models DIR`` picks another root
(``--shared-models`` another folder for those three). Files go to the Hugging Face cache first, so an interrupted
download resumes. The same list can be fetched from ComfyUI's menu: Extensions > AudioStory > Download models.
"""
from __future__ import annotations

import os
import sys

PACK_DIR = os.path.dirname(os.path.abspath(__file__))   # not resolved: the pack may be a link in custom_nodes/


def default_models_dir() -> str:
    """``<ComfyUI>/models/audiostory`` for a pack in ``<ComfyUI>/custom_nodes/<pack>``."""
    return os.path.join(os.path.dirname(os.path.dirname(PACK_DIR)), "models", "audiostory")


def main(argv: list[str]) -> int:
    sys.path.insert(0, PACK_DIR)
    from audiostory_core.cli.main import main as cli
    from audiostory_core.models.download import ROOT_NAME

    shared = default_models_dir()
    pre = [] if "--models" in argv else ["--models", os.path.join(shared, ROOT_NAME)]
    pre += [] if "--shared-models" in argv or "--models" in argv else ["--shared-models", shared]
    return cli(["download", *pre, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
