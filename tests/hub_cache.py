"""A Hugging Face cache filled by hand, in the hub's own layout, for the offline download tests."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def fill_hub_cache(hub: Path, repo: str, files: dict[str, Path | str]) -> Path:
    """Write one repo into a Hugging Face cache folder, in the cache's own layout (refs/main -> snapshot)."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    d = hub / f"models--{repo.replace('/', '--')}"
    snap = d / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        if isinstance(src, Path):
            shutil.copyfile(src, snap / name)
        else:
            (snap / name).write_text(src)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(commit)
    return snap
