"""One place for "write to a temporary name, then rename": a failed or interrupted write leaves no file."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union


@contextmanager
def atomic_write(path: Union[str, Path], tmp_name: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name or path.name + ".part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
