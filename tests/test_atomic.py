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

from audiostory_core import atomic
from audiostory_core.atomic import atomic_file, write_text_atomic
from audiostory_core.stages.audio import read_audio, write_audio
from audiostory_core.stages.plan import StoryPlan
from audiostory_core.tasks.memory import StoryMemory


def _disk_full(file, head: bytes = b"PARTIAL") -> None:
    """Write a few bytes to ``file`` (a path or an open binary file), then fail like a full disk."""
    if hasattr(file, "write"):
        file.write(head)
        file.flush()
    else:
        with open(file, "wb") as f:
            f.write(head)
    raise OSError(errno.ENOSPC, "No space left on device")


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failing_writer_keeps_the_previous_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "story.txt"
    target.write_text("previous")
    with pytest.raises(OSError, match="No space left"):
        with atomic_file(target) as f:
            _disk_full(f)
    assert target.read_text() == "previous"
    assert _only(tmp_path) == ["story.txt"]


def test_an_interrupt_mid_write_also_cleans_up(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _only(tmp_path) == ["out.bin"]


def test_success_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_file(target) as f:
        f.write(b"new")
        f.flush()
        assert target.read_text() == "old"                        # untouched until the rename
    assert target.read_text() == "new" and _only(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_audio_write_that_fails_keeps_the_previous_file(tmp_path, monkeypatch, fmt):
    from audiostory_core.stages import audio

    target = tmp_path / f"story.{fmt}"
    old = (torch.rand(2, 800) - 0.5).clamp(-0.49, 0.49)
    write_audio(target, old, 32000)
    before = target.read_bytes()
    if fmt == "wav":   # float32 WAV is written by the library's own writer
        monkeypatch.setattr(audio, "write_wav_float32", lambda file, *a, **k: _disk_full(file, b"RIFF\x00\x00"))
    else:
        monkeypatch.setattr(audio, "write_flac", lambda file, *a, **k: _disk_full(file, b"fLaC\x00"))
    with pytest.raises(OSError, match="No space left"):
        write_audio(target, torch.zeros(2, 4000), 32000)
    assert target.read_bytes() == before
    back, sr = read_audio(target)
    assert sr == 32000 and back.shape == (2, 800)
    assert _only(tmp_path) == [f"story.{fmt}"]


class HalfThenFull:
    """An open file whose first write stores half the bytes, then fails like a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.fixture
def disk_fills_mid_write(monkeypatch):
    real_fdopen = atomic.os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: HalfThenFull(real_fdopen(*a, **k)))


def test_memory_save_that_fails_keeps_the_previous_memory(tmp_path, request):
    plan = StoryPlan.from_dict({"events": [{"caption": "rain", "duration": 3.0}]})
    mem = StoryMemory().add_chapter(plan, torch.randn(1, 8, 1024), torch.randn(1, 4, 1024))
    target = mem.save(tmp_path / "memory.safetensors")
    before = target.read_bytes()
    bigger = mem.add_chapter(plan, torch.randn(1, 8, 1024), torch.randn(1, 4, 1024))
    request.getfixturevalue("disk_fills_mid_write")
    with pytest.raises(OSError, match="No space left"):
        bigger.save(target)
    assert target.read_bytes() == before
    assert StoryMemory.load(target).chapter_count == 1
    assert _only(tmp_path) == ["memory.safetensors"]


def test_json_write_that_fails_keeps_the_previous_json(tmp_path, request):
    target = tmp_path / "scenes.json"
    write_text_atomic(target, json.dumps({"scenes": [1, 2]}))
    request.getfixturevalue("disk_fills_mid_write")
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, json.dumps({"scenes": [1, 2, 3, 4]}))
    assert json.loads(target.read_text()) == {"scenes": [1, 2]}
    assert _only(tmp_path) == ["scenes.json"]


# --------------------------------------------------------------- links, planted files, concurrent writers

def test_a_planted_part_file_or_symlink_is_never_written_through(tmp_path):
    """Whatever an attacker plants beside the output (the old fixed temp names, as links to a victim file or
    as plain files), the write goes to a fresh file of its own: the victim is untouched, the output is a
    regular file, and the planted entries are left as they were."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "story.wav"
    for name in ("story.wav.part", ".story.part.wav", "story.wav.tmp"):
        (tmp_path / name).symlink_to(victim)
    (tmp_path / ".story.part").write_text("planted")
    write_audio(out, torch.zeros(2, 800), 32000)
    assert victim.read_text() == "precious"
    assert out.is_file() and not out.is_symlink()
    assert read_audio(out)[0].shape == (2, 800)
    assert (tmp_path / ".story.part").read_text() == "planted"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_symlink()) == [".story.part.wav", "story.wav.part",
                                                                              "story.wav.tmp"]


def test_an_output_that_is_a_symlink_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "plan.json"
    out.symlink_to(victim)
    write_text_atomic(out, "{}")
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and out.read_text() == "{}"


def test_two_writers_to_one_output_leave_one_complete_file(tmp_path):
    """Two processes write 8 MiB each to the same output at the same time, many rounds: every time the
    output is exactly one writer's bytes (never a mix, never short) and no temp file stays."""
    import subprocess
    import sys

    out = tmp_path / "story.bin"
    size = 8 << 20
    script = ("import sys; from audiostory_core.atomic import write_bytes_atomic\n"
              "for _ in range(int(sys.argv[3])): write_bytes_atomic(sys.argv[1], sys.argv[2].encode() * %d)" % size)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), ch, "6"],
                              cwd=Path(__file__).resolve().parents[1]) for ch in "ab"]
    seen = set()
    while any(p.poll() is None for p in procs):
        if out.exists():
            data = out.read_bytes()
            assert len(data) == size and data.count(data[:1]) == size
            seen.add(data[:1])
    assert [p.returncode for p in procs] == [0, 0]
    data = out.read_bytes()
    assert len(data) == size and data in (b"a" * size, b"b" * size)
    assert _only(tmp_path) == ["story.bin"]


def test_finished_files_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = atomic.os.fsync, atomic.os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(("fsync", atomic.os.fstat(fd).st_mode & 0o170000)),
                                                        real_fsync(fd)))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (calls.append(("replace", None)), real_replace(a, b)))
    write_text_atomic(tmp_path / "a.json", "{}")
    import stat
    assert calls == [("fsync", stat.S_IFREG), ("replace", None), ("fsync", stat.S_IFDIR)]
