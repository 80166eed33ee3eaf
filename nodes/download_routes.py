"""Fetch the known model repositories from ComfyUI's UI: two server routes behind the web extension's
"Download models" dialog (``web/model_download.js``).

Only the fixed list of ``audiostory_core.models.download.SOURCES`` is ever fetched: a request names keys
of that list, never a repository id, revision or path. Files go through the Hugging Face cache (an
interrupted download resumes) and are linked into ``models/audiostory/AudioStory/`` (the model root) and
``models/audiostory/`` (CLAP, VLM, Whisper), where the nodes look. One download runs at a time, in a thread,
so the server keeps serving; the dialog polls ``GET /audiostory/models`` for progress.

Who may start one: the owner of a server that only this machine reaches (ComfyUI's default
``--listen 127.0.0.1``); a server listening on the network needs ``AUDIOSTORY_UI_DOWNLOAD=1`` from its owner.
``AUDIOSTORY_UI_DOWNLOAD=0`` always turns it off.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Optional

import folder_paths

from ..audiostory_core.errors import ModelFilesError
from ..audiostory_core.models.config import locate
from ..audiostory_core.models.download import KEYS, ROOT_NAME, SOURCES, download_all, source, target_of
from ..audiostory_core.progress import Hooks
from .common import MODEL_FOLDER

log = logging.getLogger("AudioStory")

ROUTE = "/audiostory/models"
SWITCH = "AUDIOSTORY_UI_DOWNLOAD"
MAX_BODY = 4096                 # bytes of a download request (a list of at most len(KEYS) short keys)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SCRIPT = Path(os.path.dirname(os.path.abspath(__file__))).parent / "download_models.py"  # not resolved: a link


def models_dir() -> Path:
    """ComfyUI's ``models/audiostory`` (``--base-directory`` honoured)."""
    return Path(folder_paths.models_dir) / MODEL_FOLDER


def targets() -> tuple[Path, Path]:
    """(model root, shared folder) the UI download fills."""
    return models_dir() / ROOT_NAME, models_dir()


def fetch_hint(keys: tuple[str, ...] = ()) -> str:
    """How to fetch models from where a ComfyUI user stands: the menu, or ComfyUI's Python in ComfyUI's folder."""
    script = os.path.relpath(SCRIPT, os.getcwd())
    python = sys.executable if " " not in sys.executable else f'"{sys.executable}"'
    only = f" --only {' '.join(keys)}" if keys else ""
    return (f"Fetch them from ComfyUI's menu (Extensions > AudioStory > Download models), or in {os.getcwd()} run "
            f"`{python} {script}{only}`.")


def allowed() -> tuple[bool, str]:
    """Whether the UI may start a download, and why not."""
    switch = os.environ.get(SWITCH, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return False, f"{SWITCH}=0 turns downloads from the UI off on this server."
    if switch in ("1", "true", "yes", "on"):
        return True, ""
    from comfy.cli_args import args

    listen = str(getattr(args, "listen", "127.0.0.1") or "127.0.0.1")
    if all(h.strip() in LOOPBACK for h in listen.split(",")):
        return True, ""
    return False, (f"ComfyUI listens on {listen}, so other machines reach it: the server's owner turns downloads "
                   f"from the UI on by starting ComfyUI with {SWITCH}=1. {fetch_hint()}")


def present(target: Path) -> bool:
    try:
        return target.is_dir() and any(target.iterdir())
    except OSError:
        return False


def parse_request(body: bytes) -> list[str]:
    """The requested keys, each one of ``KEYS``; ValueError naming the problem otherwise."""
    if len(body) > MAX_BODY:
        raise ValueError(f"request larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except ValueError as e:
        raise ValueError(f"request is not JSON: {e}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys or len(keys) > len(KEYS) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f'send {{"keys": [...]}} with one or more of {list(KEYS)}')
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown component(s) {[k[:40] for k in unknown]}; choose from {list(KEYS)}")
    return list(dict.fromkeys(keys))


class DownloadJob:
    """The one download of this server: its state, progress and log, read by the route."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict = {"state": "idle"}

    def running(self) -> bool:
        return self.state.get("state") == "running"

    def snapshot(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self.state))

    def _update(self, **kw) -> None:
        with self.lock:
            self.state.update(kw)

    def _progress(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            if stage == "download":
                self.state.update(done=done, total=total)
                if 0 < done:
                    key = self.state["keys"][done - 1]
                    self.state["log"].append(f"{key}: linked into {target_of(source(key), *targets())}")
                self.state["current"] = self.state["keys"][done] if done < total else None
                self.state["files"] = [0, 0]
            else:
                self.state["files"] = [done, total]

    def start(self, keys: list[str]) -> None:
        with self.lock:
            if self.running():
                raise RuntimeError("a download is already running")
            self.state = {"state": "running", "keys": keys, "done": 0, "total": len(keys), "current": keys[0],
                          "files": [0, 0], "log": [], "error": None}
        threading.Thread(target=self._run, args=(keys,), name="AudioStory download", daemon=True).start()

    def _run(self, keys: list[str]) -> None:
        root, shared = targets()
        try:
            download_all(root, only=keys, shared_root=shared, hooks=Hooks(progress=self._progress))
        except Exception as e:  # noqa: BLE001 - shown in the dialog; the cache keeps what arrived
            log.exception("AudioStory: download from the UI failed")
            msg = str(e)
            self._update(state="error", error=msg if len(msg) < 4000 else msg[:4000] + " ...")
            return
        self._update(state="done", current=None)


JOB = DownloadJob()


def root_complete(root: Path) -> bool:
    """True when ``root`` is a loadable model root (files only), whatever its folders are named."""
    try:
        locate(root)
    except (ModelFilesError, OSError):
        return False
    return True


def status() -> dict:
    root, shared = targets()
    ok, why = allowed()
    complete = root_complete(root)
    comps = [{"key": s.key, "repo": s.repo, "note": s.note, "optional": s.optional,
              "target": str(target_of(s, root, shared)),
              "present": (complete and not s.shared) or present(target_of(s, root, shared))}
             for s in SOURCES]
    return {"components": comps, "allowed": ok, "why_not": why, "job": JOB.snapshot()}


def register_routes(server=None) -> bool:
    """Add the routes to ComfyUI's server (once); False when there is no server (e.g. imported by a test)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    server = server or getattr(PromptServer, "instance", None)
    if server is None:
        return False
    routes = server.routes

    @routes.get(ROUTE)
    async def get_models(request):
        return web.json_response(status())

    @routes.post(ROUTE + "/download")
    async def post_download(request):
        ok, why = allowed()
        if not ok:
            return web.json_response({"error": why}, status=403)
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": f"request larger than {MAX_BODY} bytes"}, status=413)
        try:
            keys = parse_request(await request.content.read(MAX_BODY + 1))
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        try:
            JOB.start(keys)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=409)
        return web.json_response(status(), status=202)

    return True


def missing_message(root: Optional[str], problem: str) -> str:
    """The loader's message for an incomplete model root: the problem, then how to fetch from here."""
    return f"AudioStory model folder {root!r} is incomplete: {problem}\n{fetch_hint()}"
