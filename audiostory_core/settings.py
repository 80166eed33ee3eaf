"""The render and planner-decoding settings, each declared once: type, default, limit, choices and help.

Why one dataclass: the CLI flags (``cli/common.py``), batch's per-story settings (``tasks/batch.py``),
re-roll's saved settings (``tasks/reroll.py``), the node widgets (``nodes/``) and the checks
(``validation.check_settings``) all derive from :class:`RenderSettings`, so a limit, a default or a new
sampler is one edit here and reaches every surface. It imports only ``errors`` (the bottom layer), so
``validation`` and the stages can import it.
"""
import random
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Optional, Union

from .errors import InputError

SAMPLERS = ("euler", "heun", "dpmpp", "unipc")          # stages/sampling.py implements each
NOISE_MODES = ("reference", "seeded")
CROSSFADE_CURVES = ("linear", "equal_power")
NATIVE_SAMPLE_RATE = 0        # the library's and nodes' "the VAE's own rate" (the CLI says 44100 instead)

# The lead phrases of evaluate/inference.py (GEN_PROMPT_ALL), in order.
LEAD_PHRASES = (
    "Create a long-form audio composition that explores ",
    "I'd like an extended audio track with rich details of ",
    "Craft an immersive soundscape that slowly unfolds ",
    "Please produce a comprehensive recording capturing every aspect of ",
    "Generate a detailed, drawn-out audio that brings to life ",
    "Let's design a textured audio piece highlighting the nuances of ",
    "Kindly fashion a lengthy audio journey through ",
    "Devise a long-form audio narrative of ",
    "Develop a gradually developing audio with meticulous attention to ",
    "Imagine and produce a vivid audio experience of ",
    "Construct a detailed soundscape that tells the story of ",
    "Please generate a sustained audio track filled with ",
    "Produce an in-depth, multi-layered audio that portrays ",
    "Design a descriptive audio capturing the essence of ",
    "Create a nuanced, extended audio that conveys ",
    "I'd like to commission a long-form audio depicting ",
    "Fashion a richly detailed audio recording of ",
    "Propose a detailed, immersive audio that showcases ",
    "Generate an elaborate audio piece focusing on ",
    "Develop a comprehensive audio that fully represents ",
)


def lead_phrase(choice: Union[str, int, None], seed: int = 0) -> str:
    """Resolve a lead-phrase choice.

    ``None``/"none" gives no lead phrase (the instruction verbatim, as ``evaluate_long_audio.py``
    does); "random" reproduces ``inference.py`` (``random.seed(seed); random.choice``), and an int
    picks one phrase by index.
    """
    if choice is None or choice == "none":
        return ""
    if choice == "random":
        return random.Random(seed).choice(LEAD_PHRASES)
    try:
        idx = int(choice)
    except (TypeError, ValueError):
        idx = None
    if idx is None or isinstance(choice, bool) or not 0 <= idx < len(LEAD_PHRASES):
        raise InputError(f"lead phrase must be none, random or an index 0..{len(LEAD_PHRASES) - 1}, got {choice!r}.")
    return LEAD_PHRASES[idx]


def _setting(default: Any, help: str, *, min: Optional[float] = None, max: Optional[float] = None,
             choices: tuple = (), decode: bool = False):
    """A dataclass field carrying its limit, choices and help (``decode``: a planner setting, not a render one)."""
    return field(default=default, metadata={"help": help, "min": min, "max": max, "choices": choices,
                                            "decode": decode})


@dataclass(frozen=True)
class RenderSettings:
    """Every setting of one render, with the library's defaults (also batch's per-story settings).

    The field order is the CLI's order. The node widgets keep ComfyUI's names where its convention
    forces one: ``cfg`` (guidance), ``sampler_name`` (sampler), ``curve`` (crossfade_curve).
    """

    steps: int = _setting(50, "sampling steps (50 is the reference)", min=1, max=1000)
    guidance: float = _setting(4.0, "classifier-free guidance against the null embedding (4.0 is the reference; "
                                    "<= 1 turns it off)", min=0.0, max=100.0)
    seed: int = _setting(0, "seed of the per-event noise", min=0, max=2 ** 64 - 1)
    noise: str = _setting("seeded", "reference = official noise (seed 0, same for every clip); "
                                    "seeded = seed + event index", choices=NOISE_MODES)
    sampler: str = _setting("euler", "euler = the reference sampler",
                            choices=SAMPLERS)
    sample_rate: int = _setting(32000, "32000 (reference) or 44100 (VAE rate)", min=8000, max=192000)
    crossfade: float = _setting(3.0, "seconds of overlap between clips (3.0 is the reference)", min=0.0, max=10.0)
    crossfade_curve: str = _setting("linear", "linear = reference; equal_power keeps loudness through the fade",
                                    choices=CROSSFADE_CURVES)
    max_new_tokens: int = _setting(1600, "upper bound on the planner's generated tokens, reasoning and events "
                                         "(1600 is the reference)", min=1, max=32768, decode=True)
    lead_phrase: str = _setting("none", "none (instruction verbatim), random (inference.py with --seed), or an "
                                        "index 0-19", decode=True)

    def render_kwargs(self) -> dict[str, Any]:
        """The render settings as keyword arguments of ``AudioStoryPipeline.generate`` and the tasks."""
        return {name: getattr(self, name) for name in RENDER_KEYS}


@dataclass(frozen=True)
class Setting:
    """One field of :class:`RenderSettings` as the surfaces read it."""

    name: str
    type: type
    default: Any
    help: str
    min: Optional[float]
    max: Optional[float]
    choices: tuple
    decode: bool

    @property
    def flag(self) -> str:
        """The CLI flag: ``crossfade_curve`` -> ``--crossfade-curve``."""
        return "--" + self.name.replace("_", "-")


SETTINGS: dict[str, Setting] = {
    f.name: Setting(name=f.name, type=f.type, default=f.default, **f.metadata)
    for f in fields(RenderSettings) if f.default is not MISSING
}
RENDER_KEYS = tuple(n for n, s in SETTINGS.items() if not s.decode)   # what a render (and a re-roll dump) holds
DECODE_KEYS = tuple(n for n, s in SETTINGS.items() if s.decode)
