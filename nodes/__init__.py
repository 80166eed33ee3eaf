"""ComfyUI node classes of the pack, collected from the node modules.

Importing this package does not import ComfyUI; :func:`load_nodes` does (it is called by the pack's
``comfy_entrypoint``). One module per node family, in the order of the pipeline. When a module fails
to import, the error is logged (with its traceback) and the rest of the pack still loads.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("AudioStory")

NODE_MODULES = ("loader", "planner", "timeline", "tokens", "sampler", "output", "video", "continuation", "score",
                "simple", "training")


def load_nodes() -> list:
    nodes: list = []
    for name in NODE_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except Exception:
            log.exception("AudioStory: nodes/%s.py failed to import; its nodes are unavailable "
                          "(the other AudioStory nodes still work).", name)
            continue
        nodes += list(getattr(mod, "NODES", []))
    seen, unique = set(), []
    for n in nodes:
        if n not in seen:
            seen.add(n)
            unique.append(n)
    return unique


def __getattr__(name):
    if name == "NODES":
        return load_nodes()
    raise AttributeError(name)
