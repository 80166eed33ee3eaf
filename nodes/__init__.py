"""ComfyUI node classes of the pack, collected from the node modules.

Importing this package does not import ComfyUI; :func:`load_nodes` does (it is called by the pack's
``comfy_entrypoint``). ``core_nodes`` is required; ``dubbing_nodes`` and ``continuation_nodes`` are
optional: when one of them is missing it is skipped, and when it fails to import the error is logged
(with its traceback) and the rest of the pack still loads.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging

log = logging.getLogger("AudioStory")

OPTIONAL_MODULES = ("dubbing_nodes", "continuation_nodes")


def load_nodes() -> list:
    from . import core_nodes

    nodes = list(core_nodes.NODES)
    for name in OPTIONAL_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            continue
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
