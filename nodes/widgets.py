"""Node widgets of the render settings, derived from :class:`~audiostory_core.settings.RenderSettings`.

Why: the widgets' defaults, ranges and choices are the core's, so a limit or a new sampler is one edit in
``audiostory_core/settings.py``. Widget names are a public contract (saved workflows hold them): where
ComfyUI's convention gave a widget another name than the setting (``cfg``, ``sampler_name``, ``curve``),
the name stays and the tooltip says which setting it is.
"""
from __future__ import annotations

from typing import Any, Optional

from comfy_api.latest import io

from ..audiostory_core.settings import NATIVE_SAMPLE_RATE, SAMPLERS, SETTINGS

REFERENCE_SAMPLER = "reference_euler"     # the node's name for the core's reference "euler"


def node_sampler_name(core: str) -> str:
    """The sampler_name option of a core sampler: ``euler`` keeps its historic name ``reference_euler``."""
    return REFERENCE_SAMPLER if core == "euler" else f"audiostory_{core}"


CORE_SAMPLERS = {node_sampler_name(s): s for s in SAMPLERS}   # sampler_name option -> core sampler


def widget_range(name: str) -> tuple[Any, Any]:
    """(min, max) of a setting's widget: the core limits; sample rate 0 = the VAE's own rate."""
    s = SETTINGS[name]
    return (NATIVE_SAMPLE_RATE if name == "sample_rate" else s.min), s.max


def setting_input(name: str, widget: Optional[str] = None, *, tooltip: str = "", optional: bool = False,
                  options: Optional[list] = None, **display) -> io.Input:
    """The widget of setting ``name`` (``widget``: its name on the node, when ComfyUI's differs).

    ``options`` replaces the choices only where a node offers more than the core (sampler_name);
    ``display`` passes step/round/control_after_generate through."""
    s = SETTINGS[name]
    widget = widget or name
    tip = tooltip or s.help + "."
    if widget != name:
        tip += f" (The setting '{name}', CLI {s.flag}; the widget keeps ComfyUI's name.)"
    if s.choices or options:
        opts = list(options if options is not None else s.choices)
        default = node_sampler_name(s.default) if name == "sampler" else s.default
        return io.Combo.Input(widget, options=opts, default=default, tooltip=tip, optional=optional)
    lo, hi = widget_range(name)
    kind = io.Int if s.type is int else io.Float
    return kind.Input(widget, default=s.default, min=lo, max=hi, tooltip=tip, optional=optional, **display)
