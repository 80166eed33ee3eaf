"""Auxiliary models by name only (audiostory_core.models.folders): what the CLAP/Whisper/VLM combos of the
nodes offer and what a prompt's value can resolve to. No ComfyUI needed; tests/test_security_comfyui.py
checks the same through a real server."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from audiostory_core.errors import ModelFilesError
from audiostory_core.models.folders import CLAP, VLM, WHISPER, model_choices, resolve_model_choice


def _model(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def layout(tmp_path):
    """models/audiostory with one model of each kind, a model root, junk, and links that lead outside."""
    base = tmp_path / "models" / "audiostory"
    _model(base / "clap-htsat-unfused", {"model_type": "clap"})
    _model(base / "larger_clap_general", {"model_type": "clap"})
    _model(base / "whisper-large-v3", {"model_type": "whisper"})
    _model(base / "Qwen2.5-VL-3B-Instruct", {"model_type": "qwen2_5_vl", "vision_config": {"depth": 1}})
    (base / "AudioStory" / "AudioStory-3B").mkdir(parents=True)           # a model root: not a CLAP
    (base / "notes.txt").write_text("not a model")
    _model(base / ".hidden-clap", {"model_type": "clap"})
    outside = _model(tmp_path / "elsewhere" / "clap", {"model_type": "clap"})
    (base / "escape").symlink_to(outside, target_is_directory=True)       # a real CLAP, but outside
    trap = tmp_path / "trap"
    trap.mkdir()
    os.mkfifo(trap / "config.json")      # opening it for reading would block: proves it is never opened
    (base / "trap").symlink_to(trap, target_is_directory=True)
    return base


def unblocked(fn, *args):
    """``fn(*args)``'s result or exception, failing the test if it blocks (a FIFO outside was opened)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(_call(fn, *args)), daemon=True)
    t.start()
    t.join(30)
    assert out, "blocked: something opened the FIFO outside the models folder"
    return out[0]


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception as e:      # returned, to be checked by the test
        return e


def test_each_kind_lists_only_its_own_folders_inside_the_registered_folder(layout):
    assert unblocked(model_choices, [layout], CLAP) == ["clap-htsat-unfused", "larger_clap_general"]  # default first
    assert unblocked(model_choices, [layout], WHISPER) == ["whisper-large-v3"]
    assert unblocked(model_choices, [layout], VLM) == ["Qwen2.5-VL-3B-Instruct"]


def test_a_listed_name_resolves_to_its_folder(layout):
    assert resolve_model_choice([layout], "larger_clap_general", CLAP) == (layout / "larger_clap_general").resolve()


HOSTILE = ["../../../../../../etc", "/etc", "~", "~/.ssh", "escape", "trap", "openai/whisper-tiny",
           "clap-htsat-unfused/../whisper-large-v3", "", None, 3, "whisper-large-v3"]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v) for v in HOSTILE])
def test_any_other_value_is_refused_without_echoing_a_path(layout, value):
    """Paths, links out, Hub ids, another kind's folder: refused; the message names the kind and the
    folder to put one in, and shows the value only when it is a plain folder name."""
    err = unblocked(resolve_model_choice, [layout], value, CLAP, "ComfyUI/models/audiostory/")
    assert isinstance(err, ModelFilesError), err
    msg = str(err)
    assert "CLAP model" in msg and "ComfyUI/models/audiostory/" in msg
    assert "/etc" not in msg and ".ssh" not in msg and "elsewhere" not in msg and str(layout) not in msg
    if value in ("escape", "trap", "whisper-large-v3"):
        assert repr(value) in msg        # a plain name is named
    else:
        assert "the value given" in msg
