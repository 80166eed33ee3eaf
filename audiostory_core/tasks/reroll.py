"""Re-roll: render chosen events again, keep every other event's latent bit for bit, restitch the story.

A story usually has one weak event; re-rendering the whole story with another seed changes every event
and costs the full sampling time. Here only the chosen events are sampled (a batch of just those rows,
their own seed, steps, sampler or edited caption) and the other rows of the previous latents are copied
unchanged, so their decoded clips are identical to before. The previous render comes from a ``--dump``
folder (``plan.json``, ``tokens.safetensors``, ``latents.safetensors``) or, in ComfyUI, from a LATENT.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

from ..errors import InputError, PlanError
from ..progress import Hooks, as_hooks
from ..settings import RENDER_KEYS, RenderSettings
from ..stages.event_tokens import EventTokens
from ..stages.plan import StoryPlan
from ..validation import read_text_file

if TYPE_CHECKING:  # the pipeline imports the stages only; no cycle at runtime
    from ..pipeline import AudioStoryPipeline, StoryAudio

DUMP_FILES = ("plan.json", "tokens.safetensors", "latents.safetensors")
# generation settings stored as metadata of latents.safetensors (JSON strings, safetensors metadata rules);
# dumps written before the settings were unified name crossfade_curve "curve" (never read back)
SETTING_KEYS = RENDER_KEYS


def parse_events(spec: Union[str, Sequence[int], None], n_events: int) -> list[int]:
    """``"2,4"``, ``"2-4"``, ``"all"`` or ``""`` (1-based, as users count events) -> sorted 0-based indices.

    An empty spec means no event (nothing to re-render); an unknown event number is an error that names
    the valid range.
    """
    if spec is None:
        return []
    if not isinstance(spec, str):
        nums = [int(i) for i in spec]
    else:
        text = spec.strip().lower()
        if text in ("", "none"):
            return []
        if text == "all":
            return list(range(n_events))
        nums = []
        for part in re.split(r"[,\s;]+", text):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
            if m is None:
                raise InputError(f"Cannot read the event list {spec!r}: use event numbers like '2,4' or '2-4' "
                                 f"(1 = the first event) or 'all'.")
            if m.group(3) is not None:
                nums.append(int(m.group(3)))
            else:
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise InputError(f"Event range {part!r} runs backwards; write it as {b}-{a}.")
                nums.extend(range(a, b + 1))
    bad = sorted({n for n in nums if not 1 <= n <= n_events})
    if bad:
        raise InputError(f"Events {bad} do not exist: the story has events 1..{n_events}.")
    return sorted({n - 1 for n in nums})


def format_events(indices: Sequence[int]) -> str:
    """0-based indices -> the 1-based ``"2,4"`` form :func:`parse_events` reads."""
    return ",".join(str(i + 1) for i in sorted(set(indices)))


@dataclass
class Dump:
    """A previous render read back from a ``--dump`` folder."""

    folder: Path
    plan: StoryPlan
    tokens: EventTokens
    latents: torch.Tensor                 # [E, T, 64] fp32, exactly as written
    settings: dict = field(default_factory=dict)


def dump_settings(settings: RenderSettings) -> dict[str, str]:
    """The render settings as safetensors metadata (so a re-roll knows the clip geometry)."""
    return {k: json.dumps(v) for k, v in settings.render_kwargs().items()}


def read_dump(folder: Union[str, Path]) -> Dump:
    """Read ``plan.json`` + ``tokens.safetensors`` + ``latents.safetensors`` with clear errors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [f for f in DUMP_FILES if not (folder / f).is_file()]
    if missing:
        raise InputError(f"{folder} is not a complete --dump folder: {', '.join(missing)} missing. Write one with "
                         "`python -m audiostory_core generate ... --dump DIR`.")
    plan = StoryPlan.from_json(read_text_file(folder / "plan.json", "the dump's plan"))
    try:
        toks = load_file(str(folder / "tokens.safetensors"))
        lat_path = str(folder / "latents.safetensors")
        lat = load_file(lat_path)
        with safe_open(lat_path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise InputError(f"Cannot read the tensors in {folder}: {type(e).__name__}: {e}") from e
    for name, d, keys in (("tokens.safetensors", toks, ("semantic", "residual", "fused")),
                          ("latents.safetensors", lat, ("latents",))):
        absent = [k for k in keys if k not in d]
        if absent:
            raise InputError(f"{folder / name} lacks {absent}; it was not written by --dump.")
    check_dump_shapes(f"The --reuse folder {folder}", None, toks, lat["latents"])
    e = len(plan.events)
    if lat["latents"].dim() != 3 or lat["latents"].shape[0] != e or toks["fused"].shape[0] != e:
        raise InputError(f"{folder}: plan.json has {e} events but the tensors hold "
                         f"{lat['latents'].shape[0]} latents / {toks['fused'].shape[0]} token sets.")
    settings = {}
    for k in SETTING_KEYS:
        if k in meta:
            settings[k] = json.loads(meta[k])
    tokens = EventTokens(semantic=toks["semantic"], residual=toks["residual"], fused=toks["fused"],
                         durations=plan.durations)
    return Dump(folder=folder, plan=plan, tokens=tokens, latents=lat["latents"], settings=settings)


def check_dump_shapes(source: str, events: Optional[int], toks: dict, latents: torch.Tensor,
                      n_queries: Optional[int] = None, frames: Optional[int] = None,
                      channels: Optional[int] = None) -> None:
    """The --dump format: semantic/fused [E, N, D], residual [E, M, D] (D = TOKEN_DIM), latents
    [E, frames, channels]; N, frames and channels are the model's when given."""
    from ..models.modules import TOKEN_DIM
    from ..shapes import check_shapes

    sem = toks.get("semantic")
    n = n_queries if n_queries is not None else (int(sem.shape[1]) if sem is not None and sem.dim() == 3 else None)
    check_shapes(source, {**toks, "latents": latents},
                 {"semantic": (events, n, TOKEN_DIM), "residual": (events, None, TOKEN_DIM),
                  "fused": (events, n, TOKEN_DIM), "latents": (events, frames, channels)},
                 hint="Write it again with `python -m audiostory_core generate ... --dump DIR` (the same models).")


def edited_events(plan: StoryPlan, previous: StoryPlan) -> list[int]:
    """0-based events whose caption or duration differs from the previous render's plan."""
    if len(plan.events) != len(previous.events):
        raise PlanError(f"The plan has {len(plan.events)} events but the previous render has "
                        f"{len(previous.events)}; a re-roll keeps the event count (render the story again "
                        "to add or remove events).")
    return [i for i, (a, b) in enumerate(zip(plan.events, previous.events))
            if a.caption != b.caption or a.duration != b.duration]


def check_reroll(plan: StoryPlan, previous: StoryPlan, render: Sequence[int]) -> list[int]:
    """Edited events (0-based); an edited event that is not re-rendered is an error (its latent is stale)."""
    edited = edited_events(plan, previous)
    stale = [i + 1 for i in edited if i not in set(render)]
    if stale:
        raise PlanError(f"Events {stale} were edited (caption or duration) but are not re-rendered, so their "
                        f"previous audio would not match the plan; add them to the re-roll list "
                        f"(e.g. --reroll {format_events(sorted(set(render) | {i - 1 for i in stale}))}).")
    return edited


def merge_tokens(previous: EventTokens, fresh: Optional[EventTokens], rows: Sequence[int],
                 durations: Sequence[float]) -> EventTokens:
    """Previous tokens with ``rows`` taken from ``fresh`` (the re-encoded edited events)."""
    sem, res, fused = previous.semantic.clone(), previous.residual.clone(), previous.fused.clone()
    if fresh is not None and rows:
        idx = list(rows)
        sem[idx] = fresh.semantic[idx].to(sem.device, sem.dtype)
        res[idx] = fresh.residual[idx].to(res.device, res.dtype)
        fused[idx] = fresh.fused[idx].to(fused.device, fused.dtype)
    return EventTokens(semantic=sem, residual=res, fused=fused, durations=list(durations))


def reroll(pipe: "AudioStoryPipeline", plan: StoryPlan, previous_tokens: EventTokens,
           previous_latents: torch.Tensor, render: Sequence[int], *, previous_plan: Optional[StoryPlan] = None,
           crossfade: float = 3.0, steps: int = 50, guidance: float = 4.0, noise: str = "seeded", seed: int = 0,
           sampler: str = "euler", sample_rate: int = 32000, crossfade_curve: str = "linear",
           hooks: Optional[Hooks] = None) -> "StoryAudio":
    """Re-render the events ``render`` (0-based) of a previous render and restitch the story.

    Events edited since ``previous_plan`` (caption, duration) are re-encoded by teacher forcing (this needs
    the planner); the others reuse ``previous_tokens``. Sampling runs only for ``render``; the other
    latents are copied bit for bit. Noise: ``seeded`` gives event ``i`` the seed ``seed + i`` (as a full
    render with that seed would); ``reference`` is the official noise (the same for every re-roll, so only
    an edit or other sampler settings change the event).
    """
    from ..pipeline import StoryAudio

    hooks = as_hooks(hooks)
    render = sorted(set(int(i) for i in render))
    if not plan.events:
        raise PlanError("The plan has no events.")
    edited = check_reroll(plan, previous_plan, render) if previous_plan is not None else []
    fresh = None
    if edited:
        if pipe.models.planner is None:
            raise InputError(f"Events {format_events(edited)} were edited, so their tokens must be re-encoded: "
                             "load the planner (LLM) too.")
        fresh = pipe.tokens(plan, hooks)
    dit = pipe.models.dit
    check_dump_shapes("The previous render (tokens, latents)", len(plan.events), vars(previous_tokens), previous_latents,
                      n_queries=int(pipe.models.null_embedding.shape[1]), frames=int(dit.config.audio_seq_len),
                      channels=int(dit.config.in_channels))
    tokens = merge_tokens(previous_tokens, fresh, edited, plan.durations)
    problems = list(plan.problems) + pipe.check_durations(plan.durations, crossfade)
    lat = pipe.sample(tokens, crossfade=crossfade, steps=steps, guidance=guidance, noise=noise, seed=seed,
                      sampler=sampler, hooks=hooks, previous_latents=previous_latents, render_events=render)
    audio, clips, sr = pipe.decode(lat, plan.durations, crossfade=crossfade, sample_rate=sample_rate,
                                   crossfade_curve=crossfade_curve, hooks=hooks)
    return StoryAudio(plan=plan, tokens=tokens, latents=lat, audio=audio, clips=clips, sample_rate=sr,
                      problems=problems)
