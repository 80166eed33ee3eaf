"""Fetch the public weights into the Hugging Face cache, then link them into the official layout.

Files live once, in the ordinary Hugging Face cache (``HF_HUB_CACHE``), so other tools share them,
``HF_HUB_OFFLINE=1`` works from a pre-filled cache and a second ``download`` fetches nothing. The
official layout (``<root>/AudioStory-3B/`` ...) is made of symlinks into the cache (hard links or
copies where symlinks are impossible) and is built in a temporary folder that is renamed into place,
so an interrupted download never leaves a half-written layout.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

from ..atomic import write_text_atomic
from ..errors import ModelFilesError
from ..progress import NO_HOOKS, Hooks
from .sources import KEYS, ROOT_NAME, SOURCES, Source, cached_snapshot


def source(key: str) -> Source:
    """The known source named ``key`` (the only repositories ever fetched)."""
    for s in SOURCES:
        if s.key == key:
            return s
    raise ModelFilesError(f"Unknown component {key!r}; choose from {list(KEYS)}.")


def hf_command(src: Source, revision: Optional[str] = None, local_dir: Optional[Path] = None) -> str:
    """The current ``hf download`` command (huggingface_hub >= 0.34) for one repo; with ``local_dir``,
    into that folder instead of the cache."""
    inc = " ".join(f"--include '{p}'" for p in (src.patterns or ()))
    rev = f" --revision {revision}" if revision else ""
    dest = f" --local-dir '{local_dir}'" if local_dir is not None else ""
    return f"hf download {src.repo}{rev} {inc}{dest}".rstrip()


def fetch_command(repo: str, search_dirs: Sequence[Union[str, Path]] = ()) -> str:
    """An ``hf download`` command that puts ``repo`` where it is looked for (an absolute folder, so the
    command works from any folder): ``<first search dir>/<repo name>``, else ``./models/audiostory/<repo name>``."""
    base = Path(search_dirs[0]) if search_dirs else Path("models") / "audiostory"
    known = next((s for s in SOURCES if s.repo == repo), None)
    src = known or Source(repo, repo, repo.split("/")[-1], None, "")
    return hf_command(src, local_dir=(base / src.folder).absolute())


def target_of(src: Source, root: Path, shared_root: Optional[Path] = None) -> Path:
    """Where ``src`` is linked: in the model root, or (a shared component) in ``shared_root`` when given."""
    return (shared_root if src.shared and shared_root is not None else root) / src.folder


def layout_help(root: Path, shared_root: Optional[Path] = None) -> str:
    lines = ["Fetch them on a machine with network access (into the Hugging Face cache, then copy the cache "
             "folder or set HF_HUB_CACHE), then run the download command again with HF_HUB_OFFLINE=1:"]
    for s in SOURCES:
        lines.append(f"  {hf_command(s)}   # -> {target_of(s, root, shared_root)}/ ({s.note})")
    return "\n".join(lines)


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as the environment says now (the hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _file_counter(hooks: Hooks, stage: str):
    """A tqdm class for ``snapshot_download``'s file loop that reports each finished file to ``hooks``."""
    from tqdm.auto import tqdm

    class FileCounter(tqdm):
        def update(self, n=1):
            out = super().update(n)
            hooks.report(stage, int(self.n), int(self.total or 0))
            return out

    return FileCounter


def _fetch(src: Source, revision: Optional[str], hooks: Hooks = NO_HOOKS) -> Path:
    """Fill the cache (resumable: the hub keeps partial files and continues them) and return the snapshot."""
    from huggingface_hub import snapshot_download

    patterns = list(src.patterns) if src.patterns else None
    # Offline: never open a connection. Older hubs keep an HTTP session made before HF_HUB_OFFLINE was
    # read, so the flag alone does not stop them from trying the network first.
    offline = _offline()
    try:
        return Path(snapshot_download(repo_id=src.repo, revision=revision, allow_patterns=patterns,
                                      local_files_only=offline, tqdm_class=_file_counter(hooks, f"files {src.key}")))
    except Exception as e:
        cached = cached_snapshot(src.repo, revision)  # offline or hub down: a complete cache still serves
        if cached is not None and _files(cached, src):
            print(f"  {src.repo}: using the cached snapshot ({type(e).__name__}: {e})", file=sys.stderr)
            return cached
        raise


def _files(snapshot: Path, src: Source) -> list[Path]:
    from fnmatch import fnmatch

    out = []
    for p in sorted(snapshot.rglob("*")):
        rel = p.relative_to(snapshot).as_posix()
        if p.is_file() and (not src.patterns or any(fnmatch(rel, pat) for pat in src.patterns)):
            out.append(p)
    return out


def _link(src: Path, dst: Path) -> str:
    """Symlink ``dst`` to the cached file; a hard link, then a copy, where that is impossible."""
    target = src.resolve()
    try:
        os.symlink(target, dst)
        return "symlink"
    except (OSError, NotImplementedError):
        pass
    try:
        os.link(target, dst)
        return "hardlink"
    except OSError:
        shutil.copy2(target, dst)
        return "copy"


def _edit_vae_config(path: Path) -> None:
    """TangoFlux names the text encoder by hub id; the layout has it next door as ``flan-t5-large``."""
    cfg = json.loads(path.read_text())
    cfg["text_encoder_name"] = "flan-t5-large"
    write_text_atomic(path, json.dumps(cfg, indent=2))   # replaces a link to the cache, never writes through it


def _same_layout(target: Path, plan: Mapping[str, Path]) -> bool:
    """True when ``target`` already links every planned file to the same cached file."""
    try:
        for name, src in plan.items():
            dst = target / name
            if not dst.exists() or (dst.is_symlink() and dst.resolve() != src.resolve()):
                return False
            if not dst.is_symlink() and dst.stat().st_size != src.stat().st_size and name != "config.json":
                return False
    except OSError:
        return False
    return True


def build_layout(snapshot: Path, src: Source, target: Path) -> bool:
    """Link the snapshot's files into ``target`` atomically; returns False when it was already there."""
    plan = {}
    renames = dict(src.renames)
    for f in _files(snapshot, src):
        rel = f.relative_to(snapshot).as_posix()
        plan[renames.get(rel, rel)] = f
    if not plan:
        raise ModelFilesError(f"The cached snapshot {snapshot} of {src.repo} holds none of {list(src.patterns or [])}.")
    if _same_layout(target, plan):
        return False
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, f in plan.items():
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link(f, dst)
        if src.key == "vae" and (tmp / "config.json").exists():
            _edit_vae_config(tmp / "config.json")
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the previous layout back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def _clean_stale(root: Path) -> None:
    """Remove temp folders of an earlier interrupted run."""
    for p in root.glob(".*.partial-*"):
        shutil.rmtree(p, ignore_errors=True)


def download_all(root: Path, only: Optional[Sequence[str]] = None,
                 revisions: Optional[Mapping[str, str]] = None,
                 fetch: Optional[Callable[[Source, Optional[str]], Path]] = None,
                 shared_root: Optional[Path] = None, hooks: Hooks = NO_HOOKS) -> dict[str, Path]:
    """Fill the cache and link the layout for every (or ``only`` the named) component.

    ``revisions`` pins a repo (key or repo id -> branch, tag or commit). Shared components (CLAP, VLM,
    Whisper) go to ``shared_root`` when given (ComfyUI: ``models/audiostory/``, where the nodes look), else
    into ``root``. ``hooks`` hears ("download", components done, total) and ("files <key>", files, total).
    Returns folder -> snapshot.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:  # pragma: no cover
        raise ModelFilesError("huggingface_hub is not installed: pip install huggingface_hub") from e
    revisions = dict(revisions or {})
    known = {s.key for s in SOURCES} | {s.repo for s in SOURCES}
    bad = sorted(set(revisions) - known) + sorted(set(only or ()) - {s.key for s in SOURCES})
    if bad:
        raise ModelFilesError(f"Unknown component(s) {bad}; choose from {sorted(s.key for s in SOURCES)}.")
    chosen = [s for s in SOURCES if (s.key in only if only else not s.optional)]
    for folder in {target_of(s, root, shared_root).parent for s in chosen}:
        folder.mkdir(parents=True, exist_ok=True)
        _clean_stale(folder)
    done: dict[str, Path] = {}
    hooks.report("download", 0, len(chosen))
    for i, src in enumerate(chosen):
        rev = revisions.get(src.key) or revisions.get(src.repo)
        target = target_of(src, root, shared_root)
        print(f"{src.repo}{'@' + rev if rev else ''} -> Hugging Face cache -> {target}", file=sys.stderr)
        try:
            snap = fetch(src, rev) if fetch is not None else _fetch(src, rev, hooks)
        except Exception as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            why = ("HF_HUB_OFFLINE is set and the cache lacks it" if offline
                   else f"{type(e).__name__}: {e}")
            raise ModelFilesError(f"Could not download {src.repo} ({why}).\n{layout_help(root, shared_root)}") from e
        changed = build_layout(snap, src, target)
        print(f"  {'linked' if changed else 'already linked'}: {target} -> {snap}", file=sys.stderr)
        done[src.folder] = snap
        hooks.report("download", i + 1, len(chosen))
    return done
