"""Atomic writes under failure: a writer that dies half-way leaves the previous file intact and no temp file.

Every writer here really writes part of its output before it fails (as a full disk or a crash would),
so a plain non-atomic write would leave a truncated file behind and these tests would fail.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from audiostory_core.atomic import atomic_write
from audiostory_core.stages.audio import read_audio, write_audio
from audiostory_core.stages.plan import StoryPlan
from audiostory_core.tasks.dubbing import write_text_atomic
from audiostory_core.tasks.memory import StoryMemory


def _disk_full(path, head: bytes = b"PARTIAL") -> None:
    """Write a few bytes to ``path``, then fail like a full disk."""
    with open(path, "wb") as f:
        f.write(head)
    raise OSError(errno.ENOSPC, "No space left on device")


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failing_writer_keeps_the_previous_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "story.txt"
    target.write_text("previous")
    with pytest.raises(OSError, match="No space left"):
        with atomic_write(target) as tmp:
            assert tmp != target and tmp.parent == target.parent    # writes go beside, not into, the target
            _disk_full(tmp)
    assert target.read_text() == "previous"
    assert _only(tmp_path) == ["story.txt"]


def test_an_interrupt_mid_write_also_cleans_up(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, tmp_name=".out.part.bin") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _only(tmp_path) == ["out.bin"]


def test_success_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_write(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"                        # untouched until the rename
    assert target.read_text() == "new" and _only(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_audio_write_that_fails_keeps_the_previous_file(tmp_path, monkeypatch, fmt):
    import soundfile

    from audiostory_core.stages import audio

    target = tmp_path / f"story.{fmt}"
    old = (torch.rand(2, 800) - 0.5).clamp(-0.49, 0.49)
    write_audio(target, old, 32000)
    before = target.read_bytes()
    if fmt == "wav":   # float32 WAV is written by the library's own writer
        monkeypatch.setattr(audio, "write_wav_float32", lambda file, *a, **k: _disk_full(file, b"RIFF\x00\x00"))
    else:
        monkeypatch.setattr(soundfile, "write", lambda file, *a, **k: _disk_full(file, b"fLaC\x00"))
    with pytest.raises(OSError, match="No space left"):
        write_audio(target, torch.zeros(2, 4000), 32000)
    assert target.read_bytes() == before
    back, sr = read_audio(target)
    assert sr == 32000 and back.shape == (2, 800)
    assert _only(tmp_path) == [f"story.{fmt}"]


def test_memory_save_that_fails_keeps_the_previous_memory(tmp_path, monkeypatch):
    import safetensors.torch

    plan = StoryPlan.from_dict({"events": [{"caption": "rain", "duration": 3.0}]})
    mem = StoryMemory().add_chapter(plan, torch.randn(1, 8, 1024), torch.randn(1, 4, 1024))
    target = mem.save(tmp_path / "memory.safetensors")
    before = target.read_bytes()
    bigger = mem.add_chapter(plan, torch.randn(1, 8, 1024), torch.randn(1, 4, 1024))
    monkeypatch.setattr(safetensors.torch, "save_file", lambda t, file, metadata=None: _disk_full(file))
    with pytest.raises(OSError, match="No space left"):
        bigger.save(target)
    assert target.read_bytes() == before
    assert StoryMemory.load(target).chapter_count == 1
    assert _only(tmp_path) == ["memory.safetensors"]


def test_dubbing_text_write_that_fails_keeps_the_previous_json(tmp_path, monkeypatch):
    target = tmp_path / "scenes.json"
    write_text_atomic(target, json.dumps({"scenes": [1, 2]}))
    real = Path.write_text

    def half_then_full(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, json.dumps({"scenes": [1, 2, 3, 4]}))
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"scenes": [1, 2]}
    assert _only(tmp_path) == ["scenes.json"]
