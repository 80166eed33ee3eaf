"""Test-only ComfyUI custom node module (linked into the browser tests' server, never shipped): counts the
AudioStory DiT's forward calls and the batch each one sees, an observable the pack does not compute.

``GET /audiostory-test/dit-batches`` installs the spy on first use and answers ``{"batches": [...]}``, the
batch size of every DiT forward since the last ``?reset=1`` (CFG doubles it: 2 rows per rendered event).
"""
from __future__ import annotations

import sys

NODE_CLASS_MAPPINGS: dict = {}
BATCHES: list[int] = []


def _install() -> bool:
    """Wrap ``AudioStoryDiT.forward`` of the loaded pack (once); False while the pack is not imported."""
    for name, mod in list(sys.modules.items()):
        cls = getattr(mod, "AudioStoryDiT", None) if name.endswith("audiostory_core.models.modules") else None
        if cls is None:
            continue
        if getattr(cls.forward, "_dit_spy", False):
            return True
        real = cls.forward

        def forward(self, x, *args, **kwargs):
            BATCHES.append(int(x.shape[0]))
            return real(self, x, *args, **kwargs)

        forward._dit_spy = True
        cls.forward = forward
        return True
    return False


def _routes() -> None:
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get("/audiostory-test/dit-batches")
    async def batches(request):
        installed = _install()
        out = {"installed": installed, "batches": list(BATCHES)}
        if request.query.get("reset"):
            BATCHES.clear()
        return web.json_response(out)


_routes()
