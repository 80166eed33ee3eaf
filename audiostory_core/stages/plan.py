"""Stage 1, plan: greedy decoding of the story (reasoning + timed events) with the official grammar.

The loop reproduces ``llm.generate(do_sample=False)`` of the official code step for step:
repetition penalty from ``generation_config.json`` first, then the two query-token logits
processors (force the next query inside a block with ``max + 10``; outside, set the block's
tokens to 0.0: weak suppression, exactly as released), then argmax; stop at an EOS id or after
``max_new_tokens``. Hidden states after the final norm are kept for every fed token, so the
event tokens of an unedited plan come straight from generation.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from ..errors import PlanError
from .processors import apply_processors, repetition_penalty
from .grammar import (TokenIds, build_instruction, encode_caption_span, encode_plain, encode_prompt,
                      parse_transcript, render_caption, split_caption)
from ..progress import Hooks, as_hooks
from ..validation import (MAX_EVENTS, MAX_INSTRUCTION_CHARS, MAX_NEW_TOKENS, MAX_NOTE_CHARS, MAX_REASONING_CHARS,
                          check_event, check_instruction, check_list, check_max_new_tokens, check_plan_events,
                          check_text, check_total_duration, check_transcript_ids, parse_json)

PLAN_FORMAT = "audiostory-plan/1"


@dataclass
class StoryEvent:
    caption: str
    duration: float
    text: Optional[str] = None            # caption span as generated, timestamp tag included
    span: Optional[list[int]] = None      # [start, end) of the event in transcript_ids


@dataclass
class StoryPlan:
    """Reasoning plus timed events; JSON-serialisable and editable."""

    instruction: str
    reasoning: str
    events: list[StoryEvent]
    total_duration: Optional[float] = None
    transcript_ids: list[int] = field(default_factory=list)   # generated ids (prompt excluded)
    problems: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d = {"format": PLAN_FORMAT, **d}
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Any, max_event_seconds: Optional[float] = None) -> "StoryPlan":
        if not isinstance(d, dict):
            raise PlanError("A plan must be a JSON object with 'instruction', 'reasoning' and 'events'.")
        fmt = d.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise PlanError(f"Unknown plan format {fmt!r}; expected {PLAN_FORMAT!r}.")
        events_in = d.get("events")
        if not isinstance(events_in, list) or not events_in:
            raise PlanError("'events' must be a non-empty list of {\"caption\": str, \"duration\": seconds}.")
        events = []
        if len(events_in) > MAX_EVENTS:
            raise PlanError(f"The plan has {len(events_in)} events; the limit is {MAX_EVENTS}.")
        for i, e in enumerate(events_in):
            where = f"events[{i}]"
            if not isinstance(e, dict):
                raise PlanError(f"{where} must be an object with 'caption' and 'duration'.")
            cap = e.get("caption")
            dur = e.get("duration")
            check_event(cap, dur, where)
            if max_event_seconds is not None and dur > max_event_seconds:
                raise PlanError(f"{where}.duration {dur} s is longer than one clip can hold "
                                f"({max_event_seconds:.2f} s); split the event in two.")
            span = e.get("span")
            if span is not None and not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
                raise PlanError(f"{where}.span must be [start, end] or absent.")
            text = e.get("text")
            if text is not None:
                check_text(text, f"{where}.text", MAX_NOTE_CHARS, PlanError)
            events.append(StoryEvent(caption=cap.strip(), duration=float(dur),
                                     text=text if isinstance(text, str) else None, span=span))
        ids = d.get("transcript_ids") or []
        if not isinstance(ids, list):
            raise PlanError("'transcript_ids' must be a list of token ids (or be left out).")
        check_list(ids, "'transcript_ids'", MAX_NEW_TOKENS, PlanError)
        check_transcript_ids(ids)
        instr = d.get("instruction", "")
        reasoning = d.get("reasoning", "")
        if not isinstance(instr, str) or not isinstance(reasoning, str):
            raise PlanError("'instruction' and 'reasoning' must be strings.")
        check_text(instr, "'instruction'", MAX_INSTRUCTION_CHARS, PlanError)
        check_text(reasoning, "'reasoning'", MAX_REASONING_CHARS, PlanError)
        problems = d.get("problems") or []
        for i, note in enumerate(check_list(problems, "'problems'", MAX_EVENTS * 4, PlanError)):
            check_text(note, f"problems[{i}]", MAX_NOTE_CHARS, PlanError)
        total = d.get("total_duration")
        check_plan_events([e.caption for e in events], [e.duration for e in events])
        if isinstance(total, bool) or not isinstance(total, (int, float)) or not math.isfinite(total) or total <= 0:
            total = None
        return cls(instruction=instr, reasoning=reasoning, events=events,
                   total_duration=float(total) if isinstance(total, (int, float)) else None,
                   transcript_ids=list(ids), problems=list(problems))

    @classmethod
    def from_json(cls, text: str, max_event_seconds: Optional[float] = None) -> "StoryPlan":
        return cls.from_dict(parse_json(text, "Plan JSON", error=PlanError), max_event_seconds)

    @property
    def durations(self) -> list[float]:
        return [e.duration for e in self.events]

    def text(self) -> str:
        """Human-readable transcript (reasoning + events), as streamed on the node."""
        lines = [self.reasoning.strip(), ""]
        lines += [f"{i + 1}. [{e.duration:g} s] {e.caption}" for i, e in enumerate(self.events)]
        return "\n".join(lines)


@dataclass
class PromptContext:
    """Extra input for the prompt (audio continuation): ``prompt_ids`` replace the plain prompt and
    ``embeds`` [P, H] overwrite the input embeddings at ``positions`` (placeholder tokens), as the
    official training code does with Whisper features (``ids_cmp_mask``)."""

    prompt_ids: list[int]
    positions: list[int]
    embeds: torch.Tensor


def embed_prompt(llm, ids: torch.Tensor, context: Optional["PromptContext"]) -> torch.Tensor:
    """Input embeddings of ``ids`` [1, L] with the context's embeddings written in place."""
    emb = llm.get_input_embeddings()(ids)
    if context is not None and context.positions:
        emb = emb.clone()
        emb[0, context.positions] = context.embeds.to(emb.device, emb.dtype)
    return emb


@dataclass
class PlanResult:
    plan: StoryPlan
    prompt_ids: list[int]
    hidden: Optional[torch.Tensor] = None   # [len(transcript)-?, H] last-layer states of fed generated tokens


def validate_instruction(description: str, total_duration: float) -> None:
    """Empty or over-long instruction, total outside (0, 600] s: a clear :class:`InputError`."""
    check_instruction(description)
    check_total_duration(total_duration, "Total duration")


def prompt_ids_for(tokenizer, instruction: str) -> list[int]:
    """The official chat prompt; the instruction is user text, so typed control tokens stay plain text."""
    return encode_prompt(tokenizer, instruction)


@torch.no_grad()
def generate_plan(planner, description: str, total_duration: float, *, lead: str = "",
                  max_new_tokens: Optional[int] = None, keep_hidden: bool = True,
                  context: Optional[PromptContext] = None, hooks: Optional[Hooks] = None,
                  fast: bool = False, static_cache: bool = False, compile: bool = False,
                  token_source=None, stats: Optional[dict] = None) -> PlanResult:
    """Decode a story plan greedily. ``description`` is the user's text; the official
    sentence " The total duration is {float} seconds." is appended.

    With the defaults this is the reference loop. ``fast`` feeds each forced query block in one
    forward, ``static_cache`` uses a preallocated KV cache and ``compile`` a CUDA-graph compiled step
    (CUDA only; eager elsewhere); ``token_source`` replaces the argmax (see
    :mod:`audiostory_core.stages.fast_decode`). Any of them switches to the fast loop, which yields the
    reference token sequence (checked per block) and states equal up to float rounding."""
    hooks = as_hooks(hooks)
    validate_instruction(description, total_duration)
    tok, ids = planner.tokenizer, planner.ids
    instruction = build_instruction(description, total_duration, lead)
    prompt = context.prompt_ids if context is not None else prompt_ids_for(tok, instruction)
    limit = check_max_new_tokens(max_new_tokens if max_new_tokens is not None else planner.generation.max_new_tokens)
    llm = planner.llm
    dev = planner.device
    eos = set(planner.generation.eos_token_ids)
    penalty = planner.generation.repetition_penalty
    sem_block, res_block = ids.semantic_block(), ids.residual_block()

    if fast or static_cache or compile or token_source is not None:
        from .fast_decode import decode_fast

        emb = embed_prompt(llm, torch.tensor([prompt], device=dev), context)
        generated, hidden = decode_fast(llm, emb, list(prompt), limit=limit, eos=eos, penalty=penalty,
                                        sem_block=sem_block, res_block=res_block, keep_hidden=keep_hidden,
                                        fast_blocks=fast, static_cache=static_cache, compile=compile,
                                        token_source=token_source, hooks=hooks, tokenizer=tok, stats=stats)
        plan = plan_from_transcript(tok, ids, instruction, generated, total_duration)
        return PlanResult(plan=plan, prompt_ids=prompt, hidden=hidden)

    from transformers import DynamicCache

    seq = torch.tensor([prompt], device=dev)
    cache = DynamicCache()
    # The official call passes inputs_embeds=embed(input_ids); identical to input_ids without a context.
    out = llm.model(inputs_embeds=embed_prompt(llm, seq, context), past_key_values=cache, use_cache=True)
    h = out.last_hidden_state
    generated: list[int] = []
    states: list[torch.Tensor] = []
    streamed = ""
    for step in range(limit):
        hooks.check()
        logits = llm.lm_head(h[:, -1:, :]).float()[:, -1, :]
        logits = repetition_penalty(logits, seq, penalty)
        apply_processors(logits, int(seq[0, -1]), sem_block, res_block)
        nxt = int(torch.argmax(logits, dim=-1))
        generated.append(nxt)
        hooks.report("plan", step + 1, limit)
        if hooks.text is not None and nxt not in sem_block[1:] and nxt not in res_block[1:]:
            streamed = tok.decode(generated)
            hooks.emit(streamed)
        if nxt in eos:
            break
        if step + 1 == limit:
            break
        seq = torch.cat([seq, torch.tensor([[nxt]], device=dev)], dim=1)
        out = llm.model(input_ids=seq[:, -1:], past_key_values=cache, use_cache=True)
        h = out.last_hidden_state
        if keep_hidden:
            states.append(h[0, -1].clone())
    hidden = torch.stack(states) if states else None
    plan = plan_from_transcript(tok, ids, instruction, generated, total_duration)
    return PlanResult(plan=plan, prompt_ids=prompt, hidden=hidden)


def plan_from_transcript(tokenizer, ids: TokenIds, instruction: str, generated: list[int],
                         total_duration: Optional[float] = None) -> StoryPlan:
    parsed = parse_transcript(generated, ids, tokenizer.decode)
    events = []
    for k, e in enumerate(parsed.events):
        events.append(StoryEvent(caption=e.caption, duration=float(e.duration), text=e.text,
                                 span=[e.gen_pos, e.end_pos]))
    return StoryPlan(instruction=instruction, reasoning=parsed.reasoning, events=events,
                     total_duration=total_duration, transcript_ids=list(generated), problems=parsed.problems)


# ---------------------------------------------------------------- teacher forcing
@dataclass
class ForcedSequence:
    """Token ids to feed for teacher forcing and where each event's queries sit."""

    ids: list[int]                 # prompt + transcript
    semantic_pos: list[list[int]]  # per event, the N input positions of <t5_k>
    residual_pos: list[list[int]]
    reused: bool                   # True when the generated transcript was reused verbatim
    # per event, why its query states differ from the generated ones ("" = same tokens, same context)
    reasons: list[str] = field(default_factory=list)

    def reencoded(self) -> list[tuple[int, str]]:
        """(0-based event, reason) for every event whose conditioning is computed anew."""
        return [(i, r) for i, r in enumerate(self.reasons) if r]


def _edit_reason(ev: StoryEvent) -> str:
    """Why an event's own tokens are rebuilt from its caption and duration."""
    if ev.span is None or ev.text is None:
        return "no generated tokens (a new or hand-written event)"
    cap, dur = split_caption(ev.text)
    what = [w for w, changed in (("caption", cap != ev.caption),
                                 ("duration", dur is None or float(dur) != float(ev.duration))) if changed]
    return f"{' and '.join(what)} edited" if what else "its text no longer matches its generated tokens"


def _event_is_unedited(ev: StoryEvent, transcript: list[int], tok, ids: TokenIds) -> bool:
    if ev.span is None or ev.text is None:
        return False
    s, e = ev.span
    if not (0 <= s < e <= len(transcript)) or transcript[s] != ids.gen_open:
        return False
    span = transcript[s:e]
    if ids.t5_open not in span:
        return False
    text = tok.decode(span[1:span.index(ids.t5_open)])
    if text != ev.text:
        return False
    cap, dur = split_caption(text)
    return cap == ev.caption and dur is not None and float(dur) == float(ev.duration)


def forced_sequence(tokenizer, ids: TokenIds, plan: StoryPlan, prompt: list[int]) -> ForcedSequence:
    """Build the teacher-forcing input for a (possibly edited or hand-written) plan.

    An unedited plan reuses its generated ids verbatim, so its states equal the ones captured during
    generation. Edited events are re-tokenized as ``<|gen|> caption <timestamp>d</timestamp>`` followed
    by the forced query blocks and ``<|/gen|>``.
    """
    tr = plan.transcript_ids
    think = tr.index(ids.think_close) if ids.think_close in tr else None
    flags = [_event_is_unedited(e, tr, tokenizer, ids) for e in plan.events]
    # Verbatim reuse only when the plan still lists exactly the events parsed from its transcript
    # (a deleted or reordered event changes the context of the events after it).
    parsed = parse_transcript(tr, ids, tokenizer.decode) if tr else None
    spans_ok = (all(flags) and parsed is not None
                and [ev.span for ev in plan.events] == [[e.gen_pos, e.end_pos] for e in parsed.events])
    reasoning_ok = think is not None and tokenizer.decode(tr[:think]) == plan.reasoning
    if spans_ok and reasoning_ok:
        body = tr[: plan.events[-1].span[1]]
        reused = True
        reasons = [""] * len(plan.events)
    else:
        if reasoning_ok:
            first_gen = plan.events[0].span[0] if flags[0] else (tr.index(ids.gen_open) if ids.gen_open in tr else think + 1)
            body = tr[:first_gen]
        else:
            body = encode_plain(tokenizer, plan.reasoning) + [ids.think_close]
        for ev, ok in zip(plan.events, flags):
            if ok:
                s, e = ev.span
                span = tr[s:e]
            else:
                text = render_caption(ev.caption, ev.duration, ev.text)
                span = ([ids.gen_open] + encode_caption_span(tokenizer, text)
                        + ids.semantic_block() + ids.residual_block() + [ids.gen_close])
            body = body + span
        reused = False
        reasons = _reasons(plan, flags, body, tr, think, reasoning_ok, ids)
    full = list(prompt) + list(body)
    sem, res = [], []
    n, m = ids.n_semantic, ids.n_residual
    p = len(prompt)
    # Event starts: the <|gen|> of each event in order (unedited spans reuse the generated positions).
    cursor = p
    for _ in plan.events:
        g = full.index(ids.gen_open, cursor)
        o = full.index(ids.t5_open, g)
        if full[o:o + n + 2] != ids.semantic_block():
            g2 = g
            raise PlanError(f"internal: malformed semantic block at {g2}")
        a = o + n + 2
        sem.append(list(range(o + 1, o + 1 + n)))
        res.append(list(range(a + 1, a + 1 + m)))
        cursor = a + m + 2
    if reused:
        # Unedited but possibly with skipped (broken) events in between: take the recorded spans.
        sem, res = [], []
        for ev in plan.events:
            g = p + ev.span[0]
            o = full.index(ids.t5_open, g)
            a = o + n + 2
            sem.append(list(range(o + 1, o + 1 + n)))
            res.append(list(range(a + 1, a + 1 + m)))
    return ForcedSequence(ids=full, semantic_pos=sem, residual_pos=res, reused=reused, reasons=reasons)


def describe_reencoding(reasons: list[str]) -> str:
    """One line for the user: which events get new conditioning and why (event numbers 1-based)."""
    changed = [f"{i + 1} ({r})" for i, r in enumerate(reasons) if r]
    kept = [str(i + 1) for i, r in enumerate(reasons) if not r]
    if not changed:
        return "plan: no event edited; every event keeps its generated tokens and context"
    line = f"plan: events re-encoded: {', '.join(changed)}"
    if kept:
        line += f"; unchanged: {', '.join(kept)}"
    return (line + ". An edit changes the context of every later event; to change one event alone, re-roll it "
            "(generate --reuse DUMP --reroll N)")


def _reasons(plan: StoryPlan, flags: list[bool], body: list[int], tr: list[int], think: Optional[int],
             reasoning_ok: bool, ids: TokenIds) -> list[str]:
    """Per event: edited (its own tokens are new), its context changed (the LLM reads the whole transcript
    causally, so an event after the first change gets new states even with its generated tokens), or ""."""
    starts, cursor = [], 0
    for _ in plan.events:
        starts.append(body.index(ids.gen_open, cursor))
        cursor = starts[-1] + 1
    out = []
    for i, (ev, unedited) in enumerate(zip(plan.events, flags)):
        if not unedited:
            out.append(_edit_reason(ev))
        elif body[:starts[i]] == tr[:ev.span[0]]:          # the same tokens after the same context
            out.append("")
        elif not reasoning_ok:
            out.append("the reasoning before it changed")
        else:
            earlier = [j for j in range(i) if not flags[j]]
            out.append(f"event {earlier[0] + 1} before it changed" if earlier
                       else "an event before it was removed or moved")
    return out
