"""Stage 2, event tokens: query hidden states -> semantic/residual tokens -> fused DiT conditioning.

States are the LLM's last layer after the final RMSNorm at the input positions of the query tokens
(``<t5_k>``, ``<aud_k>``). For a freshly generated plan they come from generation; for an edited or
hand-written plan the transcript is re-encoded by teacher forcing in one forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import PlanError
from ..models.config import clip_seconds  # noqa: F401 - the clip rule, declared with the model geometry
from .plan import PlanResult, PromptContext, StoryPlan, embed_prompt, forced_sequence, prompt_ids_for
from ..progress import Hooks, as_hooks


@dataclass
class EventTokens:
    """Per-event conditioning. ``durations`` are the plan's; ``clip_seconds`` add the crossfade tail."""

    semantic: torch.Tensor   # [E, N, 1024] projector outputs
    residual: torch.Tensor   # [E, M, 1024] audio_projector outputs
    fused: torch.Tensor      # [E, N, 1024] (sem + MHA(sem, res, res)) / t5_feature_scale
    durations: list[float]


@torch.no_grad()
def teacher_forced_states(planner, plan: StoryPlan, hooks: Optional[Hooks] = None,
                          context: Optional[PromptContext] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-encode the plan's transcript in one forward pass; returns [E,N,H], [E,M,H] states."""
    hooks = as_hooks(hooks)
    if not plan.events:
        raise PlanError("The plan has no events to render.")
    prompt = context.prompt_ids if context is not None else prompt_ids_for(planner.tokenizer, plan.instruction)
    seq = forced_sequence(planner.tokenizer, planner.ids, plan, prompt)
    hooks.check()
    ids = torch.tensor([seq.ids], device=planner.device)
    emb = embed_prompt(planner.llm, ids, context)
    h = planner.llm.model(inputs_embeds=emb, use_cache=False).last_hidden_state[0]
    hooks.report("tokens", 1, 1)
    sem = torch.stack([h[p] for p in seq.semantic_pos])
    res = torch.stack([h[p] for p in seq.residual_pos])
    return sem, res


def reencoding_reasons(planner, plan: StoryPlan, context: Optional[PromptContext] = None) -> list[str]:
    """Per event, why teacher forcing gives it new states ("" = its generated tokens in their generated
    context); tokenization only, no forward pass."""
    prompt = context.prompt_ids if context is not None else prompt_ids_for(planner.tokenizer, plan.instruction)
    return forced_sequence(planner.tokenizer, planner.ids, plan, prompt).reasons


def generated_states(result: PlanResult, planner) -> tuple[torch.Tensor, torch.Tensor]:
    """States captured during generation, indexed like the official code.

    ``hidden[j]`` is the state whose input was generated token ``j`` (the prompt is excluded).
    """
    if result.hidden is None:
        raise PlanError("This plan was generated without keeping hidden states.")
    n, m = planner.ids.n_semantic, planner.ids.n_residual
    tr = result.plan.transcript_ids
    sem, res = [], []
    for ev in result.plan.events:
        s, e = ev.span
        o = tr.index(planner.ids.t5_open, s)
        a = o + n + 2
        sem.append(result.hidden[o + 1:o + 1 + n])
        res.append(result.hidden[a + 1:a + 1 + m])
    return torch.stack(sem), torch.stack(res)


@torch.no_grad()
def event_tokens(planner, plan: StoryPlan, generated: Optional[PlanResult] = None,
                 hooks: Optional[Hooks] = None, context: Optional[PromptContext] = None) -> EventTokens:
    """Project and fuse the query states of every event of ``plan``.

    When ``generated`` is the unedited result of :func:`generate_plan`, its captured states are
    used (the official path); otherwise the plan is re-encoded by teacher forcing.
    """
    if generated is not None and generated.plan is plan and generated.hidden is not None:
        sem_h, res_h = generated_states(generated, planner)
    else:
        sem_h, res_h = teacher_forced_states(planner, plan, hooks, context)
    sem, res = planner.heads.project(sem_h, res_h)
    fused = planner.heads.fuse(sem, res)
    return EventTokens(semantic=sem, residual=res, fused=fused, durations=plan.durations)
