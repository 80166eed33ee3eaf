"""Test-only ComfyUI custom node module (linked into the training test's server, never shipped): counts the
VAE encodes (diffusers ``AutoencoderOobleck.encode``), an observable the pack does not compute: a clip whose
latents come from the training cache is not encoded.

``GET /audiostory-test/vae-encodes`` answers ``{"encodes": N}``, the encodes since the last ``?reset=1``.
"""
from __future__ import annotations

NODE_CLASS_MAPPINGS: dict = {}
ENCODES = [0]


def _install() -> None:
    from diffusers import AutoencoderOobleck

    real = AutoencoderOobleck.encode

    def encode(self, *args, **kwargs):
        ENCODES[0] += 1
        return real(self, *args, **kwargs)

    AutoencoderOobleck.encode = encode


def _routes() -> None:
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get("/audiostory-test/vae-encodes")
    async def encodes(request):
        out = {"encodes": ENCODES[0]}
        if request.query.get("reset"):
            ENCODES[0] = 0
        return web.json_response(out)


_install()
_routes()
