"""Shared fixtures: a tiny checkpoint built here (runs anywhere) and the shared official one (if present)."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", category=FutureWarning)

def _shared_fixture() -> Path:
    if os.environ.get("AUDIOSTORY_SHARED_FIXTURE"):
        return Path(os.environ["AUDIOSTORY_SHARED_FIXTURE"])
    for cand in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")):
        if (cand / "fixtures" / "audiostory-tiny").is_dir():
            return cand / "fixtures" / "audiostory-tiny"
    return Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "audiostory-tiny"


SHARED_FIXTURE = _shared_fixture()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A model root in the official layout with a tiny LLM trained to emit the grammar (~10 s to build)."""
    from tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_root, tmp_path_factory):
    from audiostory_core.pipeline import AudioStoryPipeline

    os.environ.setdefault("AUDIOSTORY_CACHE", str(tmp_path_factory.mktemp("cache")))
    return AudioStoryPipeline.from_pretrained(tiny_root, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The checkpoint written by the official code (``../shared/fixtures/audiostory-tiny``)."""
    if not (SHARED_FIXTURE / "audiostory" / "config.yaml").is_file():
        pytest.skip(f"shared official fixture not found at {SHARED_FIXTURE} (set AUDIOSTORY_SHARED_FIXTURE)")
    return SHARED_FIXTURE


@pytest.fixture(scope="session")
def shared_pipeline(shared_root, tmp_path_factory):
    from audiostory_core.pipeline import AudioStoryPipeline

    os.environ.setdefault("AUDIOSTORY_CACHE", str(tmp_path_factory.mktemp("cache")))
    return AudioStoryPipeline.from_pretrained(shared_root, device="cpu", dtype="fp32")
