"""The nodes' own input checks (what ComfyUI's min/max/list checks cannot say) and plan JSON
parsing, each returning or raising a message that names the input.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..audiostory_core import validation
from ..audiostory_core.errors import AudioStoryError, InputError, PlanError
from ..audiostory_core.stages.plan import StoryPlan


MAX_TOTAL_SECONDS = validation.MAX_TOTAL_SECONDS


def instruction_problem(instruction: Any) -> Optional[str]:
    """The Planner's own check (ComfyUI cannot tell an empty story): a message, or None when fine.

    None (a linked input, unknown at validation time) is not checked here; execution checks it."""
    from ..audiostory_core.validation import check_instruction

    if instruction is None:
        return None
    try:
        check_instruction(instruction)
    except InputError as e:
        return str(e)
    return None


def sample_rate_problem(sample_rate: Any) -> Optional[str]:
    """Decode's rule, which a min/max pair cannot express: 0 (the VAE's own rate) or 8000-192000 Hz.

    Naming ``sample_rate`` in ``validate_inputs`` switches ComfyUI's own range check off for it, so this
    checks both ends."""
    from ..audiostory_core.validation import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_sample_rate

    if sample_rate is None:
        return None
    try:
        check_sample_rate(sample_rate, allow_native=True)
    except InputError:
        return (f"sample_rate must be 0 (the VAE's own rate) or between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, "
                f"got {sample_rate} (32000 is the reference output rate).")
    return None


def validate_plan_inputs(instruction: Any, total_duration: Any, max_new_tokens: Any) -> Optional[str]:
    """A ComfyUI-style validation message, or None when valid (None inputs are links: not checked).

    The rules are :mod:`audiostory_core.validation`'s, shared with the library and the CLI."""
    try:
        if instruction is not None:
            validation.check_instruction(instruction)
        if total_duration is not None:
            validation.check_total_duration(total_duration, "total_duration")
        if max_new_tokens is not None:
            validation.check_max_new_tokens(max_new_tokens)
    except AudioStoryError as e:
        return str(e)
    return None


def parse_plan_json(text: Any, max_event_seconds: Optional[float] = None) -> StoryPlan:
    if not isinstance(text, str) or not text.strip():
        raise PlanError("The plan JSON is empty. Paste the JSON shown by AudioStoryPlanner (or write "
                        '{"instruction": "...", "reasoning": "...", "events": [{"caption": "...", "duration": 4.0}]}).')
    return StoryPlan.from_json(text, max_event_seconds=max_event_seconds)


def check_clip_lengths(durations: Sequence[float], crossfade: float, max_clip_seconds: float) -> list[str]:
    """Raise a clear error when an event (+ crossfade tail) does not fit in one DiT clip; return the
    warnings (clips shorter than the crossfade). Same rules as the library and the CLI."""
    validation.check_crossfade(crossfade)
    return validation.clip_problems(list(durations), float(crossfade), max_clip_seconds)


def describe_plan(plan: StoryPlan) -> str:
    """The finished plan as the Planner shows it after a run: the event list first (index, start-end on the
    plan's timeline, caption), then any warnings, then the reasoning."""
    lines, start = [f"{len(plan.events)} events, {sum(e.duration for e in plan.events):g} s:"], 0.0
    for i, e in enumerate(plan.events, start=1):
        lines.append(f"{i}. {start:g}\u2013{start + e.duration:g} s  {e.caption}")
        start += e.duration
    if plan.problems:
        lines += ["", "warnings:"] + [f"- {p}" for p in plan.problems]
    if plan.reasoning.strip():
        lines += ["", "reasoning: " + plan.reasoning.strip()]
    return "\n".join(lines)
