"""One place for "write to a temporary name, then rename": a failed or interrupted write leaves no file,
a finished one survives a power cut, and no write ever goes through a link someone planted.

The temporary file is created with ``tempfile.mkstemp`` (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random
name, then given the mode a plain ``open()`` would give) in the target's own folder, so an existing file
or symlink at any name is never opened, and two writers to one target never share a temporary file: the
last rename wins and the target is always one writer's complete file. On success: fsync the file, rename it over the target, fsync the folder.
"""
from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Union

PathLike = Union[str, Path]

TEMP_MARK = ".part"
"""Every temporary name holds this (``.<stem>.<random>.part<suffix>``): cleanup and tests look for it."""


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0666 less the umask), read without changing the
    umask (Linux: /proc/self/status); mkstemp's own 0600 would hide outputs from other users."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


FILE_MODE = _file_mode()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_regular_file(path: Path, created: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino)


def commit(tmp: PathLike, path: PathLike) -> None:
    """Durably move a finished temporary file (never a link) onto ``path`` in the same folder."""
    tmp, path = Path(tmp), Path(path)
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{tmp.name} is not a regular file; refusing to move it onto {path.name}.")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


@contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[int, Path, os.stat_result]]:
    """A fresh, exclusively created temporary file next to ``path``; removed unless it was renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{TEMP_MARK}{path.suffix}")
    tmp = Path(name)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, FILE_MODE)
    created = os.fstat(fd)
    try:
        yield fd, tmp, created
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
        # remove our own temp file only (never a link or file someone put in its place)
        if _same_regular_file(tmp, created):
            tmp.unlink()


@contextmanager
def atomic_file(path: PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file object (the exclusively created temporary file itself); on success its
    content replaces ``path`` durably, otherwise nothing changes."""
    path = Path(path)
    with _temp_beside(path) as (fd, tmp, created):
        f = os.fdopen(os.dup(fd), "wb")
        try:
            yield f
            f.flush()
        finally:
            f.close()
        os.fsync(fd)
        os.replace(tmp, path)
        _fsync_folder(path.parent)


def write_bytes_atomic(path: PathLike, data: Union[bytes, bytearray, memoryview]) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and durably."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def append_durably(path: PathLike, text: str) -> None:
    """Append UTF-8 ``text`` to a log file and fsync it (never through a symlink at ``path``)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
