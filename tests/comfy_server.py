"""Start a real ComfyUI (CPU) with this pack and a tiny model root, for the end-to-end and browser tests.

ComfyUI comes from ``COMFYUI_DIR`` (default ``../shared/vendor/ComfyUI`` next to the clone, a read-only
ComfyUI 0.8.0 tree). It is started from a temporary copy with ``--base-directory`` and every writable
folder (models, custom_nodes, input, output, temp, user, the database) in a temporary directory, so the
source tree is never written. The pack is linked as ``custom_nodes/comfyui-audiostory``; nothing but the
pack itself puts example media into the input folder (it copies its bundled examples on import).
"""
from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
PACK = "comfyui-audiostory"
TOOLS = REPO / "tools"

# Every node id the pack registers; a missing one fails the tests. Add new nodes here.
NODE_IDS = (
    "AudioStoryModelLoader", "AudioStoryPlanner", "AudioStoryPlanFromJSON", "AudioStoryEventTokens",
    "AudioStoryConsistencyMemory", "AudioStorySampler", "AudioStoryNoise", "AudioStoryDecode",
    "AudioStorySaveAudio", "AudioStoryMuxVideo", "AudioStoryVideoScenes", "AudioStoryVideoCaptioner",
    "AudioStoryDubbingPlan", "AudioStoryAudioContext", "AudioStoryContinuationJoin", "AudioStoryScore",
    "AudioStorySimple",
    "AudioStoryTimeline",
    "AudioStoryTrainingData", "AudioStoryTrainLora", "AudioStorySaveLora",
)
# Lines in ComfyUI's log that mean part of the pack did not load (nodes/__init__.py, ComfyUI's loader).
IMPORT_FAILURE_MARKERS = ("AudioStory: nodes/", "IMPORT FAILED", "Cannot import")


def comfyui_dir() -> Path:
    """``COMFYUI_DIR``, else ``../shared/vendor/ComfyUI`` resolved relative to this repository."""
    env = os.environ.get("COMFYUI_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO.parent / "shared" / "vendor" / "ComfyUI").resolve()


def comfyui_missing_requirements(root: Path) -> list[str]:
    """The lines of ComfyUI's ``requirements.txt`` whose distribution is not installed in this Python.

    ComfyUI imports all of them at start-up (``main.py`` alone is not enough: without ``einops`` every
    server test errors), so each one is checked by its distribution name and version.
    """
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for line in (root / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(line)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (installed: {version})")
    return missing


def comfyui_missing_hint() -> str:
    root = comfyui_dir()
    if not (root / "main.py").is_file():
        where = shlex.quote(str(root))
        return (f"ComfyUI >= 0.8 at {root}: git clone --depth 1 --branch v0.8.0 "
                f"https://github.com/comfyanonymous/ComfyUI {where} && python -m pip install -r {where}/requirements.txt "
                "(or set COMFYUI_DIR to a ComfyUI 0.8 folder; see DEVELOPERS.md)")
    missing = comfyui_missing_requirements(root)
    return (f"ComfyUI's requirements {', '.join(missing)}: "
            f"python -m pip install -r {shlex.quote(str(root / 'requirements.txt'))}")


def comfyui_available() -> bool:
    """ComfyUI's tree is there and every requirement it imports is installed."""
    root = comfyui_dir()
    return (root / "main.py").is_file() and (root / "requirements.txt").is_file() \
        and not comfyui_missing_requirements(root)


def tool(name: str):
    """A script from ``tools/`` (not a package) as a module: the workflow builder, the media maker."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    return importlib.import_module(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    """A tiny HTTP client for one running server."""

    def __init__(self, base: str, root: Path, log: Path, proc: subprocess.Popen):
        self.base, self.root, self.log, self.proc = base, root, log, proc
        self.object_info: dict = {}
        self.startup_log = ""

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def submit(self, prompt: dict, extra: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": str(uuid.uuid4())}
        if extra:
            body["extra_data"] = extra
        code, r = self.post("/prompt", body)
        assert code == 200 and "prompt_id" in r, f"prompt rejected: {json.dumps(r)[:3000]}"
        return r["prompt_id"]

    def wait(self, pid: str, timeout: float = 900) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h and h[pid].get("status", {}).get("status_str") in ("success", "error"):
                return h[pid]
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")

    def run(self, prompt: dict, extra: dict | None = None, timeout: float = 900) -> dict:
        return self.wait(self.submit(prompt, extra), timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def import_failures(self) -> list[str]:
        """Startup log lines saying that (part of) the pack failed to import."""
        return [line for line in self.startup_log.splitlines() if any(m in line for m in IMPORT_FAILURE_MARKERS)]


def prepare_base(base: Path, shared_root: Path, extra_nodes: Sequence[Path] = ()) -> Path:
    """The writable ComfyUI base folder: the pack, ``models/audiostory/AudioStory`` (the shared tiny
    checkpoint), tiny random Whisper, VLM and CLAP under the folder names the shipped workflows use;
    ``extra_nodes``: test-only custom node modules linked next to the pack (e.g. ``tests/dit_spy.py``)."""
    from tiny_clap import build_tiny_clap
    from tiny_media_models import build_tiny_vlm, build_tiny_whisper

    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK).symlink_to(REPO, target_is_directory=True)
    for extra in extra_nodes:
        (base / "custom_nodes" / extra.name).symlink_to(extra)
    models = base / "models" / "audiostory"
    models.mkdir(parents=True)
    (models / "AudioStory").symlink_to(shared_root, target_is_directory=True)
    build_tiny_whisper(models / "whisper-large-v3")
    build_tiny_vlm(models / "Qwen2.5-VL-3B-Instruct", shared_root / "Qwen2.5-tiny-Instruct")
    build_tiny_clap(models / "clap-htsat-unfused")     # the Score node's CLAP (fix-one-event workflow)
    for d in ("input", "output", "temp", "cache", "user"):
        (base / d).mkdir()
    return base


def start(base: Path, startup_timeout: float = 600, env: Optional[dict] = None) -> Comfy:
    """Start ``main.py --cpu`` from a temporary copy of COMFYUI_DIR with everything writable under ``base``
    (``env``: extra environment variables of the server)."""
    src = comfyui_dir()
    app = base / "ComfyUI"
    top_level_data = {"custom_nodes", "models", "input", "output", "user", "temp"}   # all under base instead

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in (".git", "__pycache__")}
        return skip | (top_level_data & set(names) if Path(folder) == src else set())

    shutil.copytree(src, app, ignore=ignore, copy_function=shutil.copyfile)
    for p in [app, *app.rglob("*")]:            # the vendor tree is read-only; the copy is ours
        if p.is_dir():
            p.chmod(0o755)
    port = free_port()
    log = base / "comfyui.log"
    env = dict(os.environ, AUDIOSTORY_CACHE=str(base / "cache"), PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, str(app / "main.py"), "--cpu", "--disable-api-nodes", "--listen", "127.0.0.1",
           "--port", str(port), "--base-directory", str(base),
           "--output-directory", str(base / "output"), "--input-directory", str(base / "input"),
           "--temp-directory", str(base / "temp"), "--user-directory", str(base / "user"),
           "--database-url", "sqlite:///:memory:"]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=str(base), stdout=fh, stderr=subprocess.STDOUT, env=env)
    fh.close()
    c = Comfy(f"http://127.0.0.1:{port}", base, log, proc)
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            c.get("/system_stats")
            break
        except Exception:
            if time.time() - t0 > startup_timeout:
                stop(c)
                raise RuntimeError(f"ComfyUI did not start in {startup_timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
    c.object_info = c.get("/object_info")
    c.startup_log = c.log_text()
    return c


def serve(base_dir: Path, shared_root: Path,
          configure: Optional[Callable[[Path], None]] = None, env: Optional[dict] = None,
          extra_nodes: Sequence[Path] = ()) -> Iterator[Comfy]:
    """Body of a module-scoped server fixture: ComfyUI must be there (``need``), started, then stopped.

    ``configure(base)`` runs once the server is up (the browser test writes its UI settings there);
    ``env`` adds environment variables to the server's; ``extra_nodes`` as ``prepare_base``.
    """
    import pytest
    from conftest import need

    need(comfyui_available(), "ComfyUI", comfyui_missing_hint())
    base = prepare_base(base_dir, shared_root, extra_nodes)
    try:
        c = start(base, env=env)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        if configure is not None:
            configure(c.base)
        yield c
    finally:
        stop(c)


def stop(c: Comfy) -> None:
    c.proc.terminate()
    try:
        c.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        c.proc.kill()
        c.proc.wait()


def error_of(entry: dict) -> str:
    for kind, msg in entry["status"].get("messages", []):
        if kind == "execution_error":
            return (f"{msg.get('node_type')}: {msg.get('exception_type')}: {msg.get('exception_message')}\n"
                    f"{''.join(msg.get('traceback', []))[-3000:]}")
    return json.dumps(entry["status"])[:2000]
