"""The values passed between the AudioStory nodes (custom socket types), without ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..audiostory_core.models.config import VAE_SAMPLE_RATE, clip_seconds, max_clip_seconds
from ..audiostory_core.stages.event_tokens import EventTokens
from ..audiostory_core.stages.plan import PlanResult, PromptContext, StoryPlan


@dataclass
class PlannerHandle:
    """AUDIOSTORY_PLANNER: the planner (LLM + tokenizer + heads) and what the other stages need.

    ``llm_patcher``/``heads_patcher`` are ComfyUI ModelPatchers (None outside ComfyUI); the
    ``planner`` object is the core :class:`~audiostory_core.loading.Planner` whose modules they manage.
    """

    planner: Any
    null_embedding: torch.Tensor          # [1, N, 1024] CFG negative, CPU
    audio_seq_len: int                    # latent frames per clip
    vae_sample_rate: int = VAE_SAMPLE_RATE
    root_name: str = ""
    llm_patcher: Any = None
    heads_patcher: Any = None

    @property
    def max_clip_seconds(self) -> float:
        return max_clip_seconds(self.audio_seq_len, self.vae_sample_rate)


@dataclass
class PlanBundle:
    """STORY_PLAN: a plan plus, when it came from the planner, the generation result and the prompt
    context it was generated with (so unedited plans reuse the generated query states)."""

    plan: StoryPlan
    result: Optional[PlanResult] = None
    context: Optional[PromptContext] = None


@dataclass
class EventsBundle:
    """AUDIOSTORY_EVENTS: fused tokens [E,N,1024], durations, CFG negative and clip geometry."""

    tokens: EventTokens
    fused: torch.Tensor                  # [E, N, 1024] (memory-fused when a memory was connected), CPU
    null_embedding: torch.Tensor         # [1, N, 1024], CPU
    crossfade: float
    audio_seq_len: int
    plan: Optional[StoryPlan] = None
    vae_sample_rate: int = VAE_SAMPLE_RATE

    @property
    def count(self) -> int:
        return int(self.fused.shape[0])

    @property
    def durations(self) -> list[float]:
        return list(self.tokens.durations)

    @property
    def clip_seconds(self) -> list[float]:
        return clip_seconds(self.durations, self.crossfade)


@dataclass
class AudioContextValue:
    """The minimal shape of an ``AUDIOSTORY_AUDIO_CONTEXT`` value: a fixed prompt context and a prefix.

    The continuation nodes pass a richer :class:`~audiostory_core.continuation.AudioContext`, which can
    build the prompt context for any instruction (``prompt_context``); see :func:`planner_audio_context`.
    """

    context: Optional[PromptContext] = None
    instruction_prefix: str = ""


def planner_audio_context(audio_context: Any, tokenizer, instruction: str,
                          total_duration: float) -> tuple[str, Optional[PromptContext]]:
    """``(lead, prompt context)`` for the Planner's OWN instruction and total duration.

    The audio tokens sit in the prompt next to the instruction, so a context built for another
    instruction or duration (e.g. the one typed on the Audio Context node) would plan from the wrong
    prompt. Contexts that can rebuild themselves (``prompt_context(tokenizer, full_instruction)``, as
    ``AudioContext`` does) are rebuilt for ``build_instruction(prefix + instruction, total_duration)``;
    the text fallback has no prompt context (None) and only contributes its prefix. Plain values with
    a fixed ``.context`` (:class:`AudioContextValue`) are used as given.
    """
    from ..audiostory_core.stages.grammar import build_instruction

    if audio_context is None:
        return "", None
    lead = getattr(audio_context, "instruction_prefix", "") or ""
    build = getattr(audio_context, "prompt_context", None)
    if callable(build):
        return lead, build(tokenizer, build_instruction(instruction, float(total_duration), lead))
    return lead, getattr(audio_context, "context", None)
