"""Cross-chapter consistency memory: what a story remembers of its earlier chapters.

A :class:`StoryMemory` keeps, for the last ``window`` events of previous chapters, their captions,
durations and query tokens (semantic + residual, 1024-d), plus the plans of the chapters those events
belong to. It is used in two places, both of which fall back to the exact reference computation when
the memory is absent or empty:

* **planning** (:func:`memory_prompt_ids`): the earlier chapters become earlier turns of the chat,
  i.e. the planner sees "user: chapter 1 instruction / assistant: chapter 1 plan" before the new
  instruction, so its reasoning, captions and query states are conditioned on what already happened;
* **event tokens** (:func:`fuse_with_memory`): the fusion attention ``sem + MHA(sem, res, res)``
  additionally attends to the remembered residual tokens (the "consistency queries" that carry the
  sound world). ``strength`` scales their attention weight (log-bias on the keys); 0 disables it.

The memory is immutable: :meth:`StoryMemory.add_chapter` returns a new object, so ComfyUI's
output cache never sees a value change under it. It saves to one safetensors file (tensors + JSON
metadata) written atomically.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from ..atomic import write_bytes_atomic
from ..errors import InputError, WeightsMismatchError
from ..validation import MAX_MEMORY_JSON_BYTES, check_event, check_list, parse_json

MEMORY_FORMAT = "audiostory-memory/1"


@dataclass(frozen=True)
class RememberedEvent:
    chapter: int
    caption: str
    duration: float
    semantic: torch.Tensor   # [N, D] float32, CPU
    residual: torch.Tensor   # [M, D] float32, CPU


@dataclass(frozen=True)
class StoryMemory:
    window: int = 8
    strength: float = 0.5
    chapters: tuple = ()            # plan JSON strings, oldest first (index = chapter number - 1)
    events: tuple = ()              # RememberedEvent, oldest first, at most ``window``

    # ------------------------------------------------------------ state
    @property
    def is_empty(self) -> bool:
        return not self.events

    @property
    def chapter_count(self) -> int:
        return len(self.chapters)

    def with_settings(self, window: Optional[int] = None, strength: Optional[float] = None) -> "StoryMemory":
        w = self.window if window is None else int(window)
        s = self.strength if strength is None else float(strength)
        if w < 1:
            raise InputError(f"memory window must be at least 1 event, got {w}")
        if not (0.0 <= s <= 10.0) or math.isnan(s):
            raise InputError(f"memory strength must be in [0, 10], got {s}")
        return replace(self, window=w, strength=s, events=tuple(self.events[-w:]))

    def add_chapter(self, plan, semantic: torch.Tensor, residual: torch.Tensor) -> "StoryMemory":
        """A new memory with ``plan``'s events appended (tokens [E,N,D], [E,M,D]); keeps the last ``window``."""
        e = len(plan.events)
        if semantic.shape[0] != e or residual.shape[0] != e:
            raise InputError(f"plan has {e} events but tokens for {semantic.shape[0]}")
        idx = len(self.chapters)
        new = [RememberedEvent(idx, ev.caption, float(ev.duration), semantic[i].detach().float().cpu().clone(),
                               residual[i].detach().float().cpu().clone()) for i, ev in enumerate(plan.events)]
        return replace(self, chapters=self.chapters + (plan.to_json(indent=None),),
                       events=tuple((list(self.events) + new)[-self.window:]))

    def remembered_chapters(self) -> list[int]:
        """Indices of the chapters that still have events in the window (oldest first)."""
        return sorted({ev.chapter for ev in self.events})

    def chapter_plans(self) -> list:
        from ..stages.plan import StoryPlan

        return [StoryPlan.from_json(self.chapters[i]) for i in self.remembered_chapters()]

    def residual_bank(self) -> Optional[torch.Tensor]:
        """All remembered residual tokens, [K*M, D] (None when empty)."""
        if not self.events:
            return None
        return torch.cat([ev.residual for ev in self.events], dim=0)

    def recap(self) -> str:
        if not self.events:
            return "(empty memory)"
        lines = [f"{len(self.chapters)} chapter(s) seen; remembering the last {len(self.events)} event(s):"]
        lines += [f"  ch{ev.chapter + 1} [{ev.duration:g} s] {ev.caption}" for ev in self.events]
        return "\n".join(lines)

    # ------------------------------------------------------------ files
    def save(self, path) -> Path:
        from safetensors.torch import save

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        meta_events = []
        for i, ev in enumerate(self.events):
            tensors[f"event{i}.semantic"] = ev.semantic.contiguous()
            tensors[f"event{i}.residual"] = ev.residual.contiguous()
            meta_events.append({"chapter": ev.chapter, "caption": ev.caption, "duration": ev.duration})
        meta = {"format": MEMORY_FORMAT, "window": self.window, "strength": self.strength,
                "chapters": list(self.chapters), "events": meta_events}
        return write_bytes_atomic(path, save(tensors, metadata={"audiostory_memory": json.dumps(meta)}))

    @classmethod
    def load(cls, path) -> "StoryMemory":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"Memory file {path} does not exist. Save one first (mode 'save').")
        try:
            with safe_open(str(path), "pt") as fh:
                meta = parse_json((fh.metadata() or {}).get("audiostory_memory", "null"), f"{path.name}'s metadata",
                                  max_bytes=MAX_MEMORY_JSON_BYTES)
                if not isinstance(meta, dict) or meta.get("format") != MEMORY_FORMAT:
                    raise InputError(f"{path} is not an AudioStory memory file ({MEMORY_FORMAT}).")
                events = []
                for i, m in enumerate(check_list(meta["events"], "its events")):
                    check_event(m["caption"], m["duration"], f"memory event {i}")   # the plans' bounds
                    events.append(RememberedEvent(int(m["chapter"]), str(m["caption"]), float(m["duration"]),
                                                  fh.get_tensor(f"event{i}.semantic").float(),
                                                  fh.get_tensor(f"event{i}.residual").float()))
        except (InputError, WeightsMismatchError):
            raise
        except Exception as e:
            raise InputError(f"Cannot read memory file {path}: {e}") from e
        check_memory_shapes(path, events)
        return cls(window=int(meta["window"]), strength=float(meta["strength"]),
                   chapters=tuple(meta["chapters"]), events=tuple(events))


def check_memory_shapes(path, events) -> None:
    """Every remembered event holds [N, D] semantic and [M, D] residual tokens in the token space
    (D = TOKEN_DIM), with the same N and M as the first event (one planner wrote them)."""
    from ..models.modules import TOKEN_DIM
    from ..shapes import check_shapes

    if not events:
        return
    n, m = events[0].semantic.shape[0] if events[0].semantic.dim() == 2 else None, \
        events[0].residual.shape[0] if events[0].residual.dim() == 2 else None
    tensors, expected = {}, {}
    for i, ev in enumerate(events):
        tensors[f"event{i}.semantic"], expected[f"event{i}.semantic"] = ev.semantic, (n, TOKEN_DIM)
        tensors[f"event{i}.residual"], expected[f"event{i}.residual"] = ev.residual, (m, TOKEN_DIM)
    check_shapes(f"Memory file {path}", tensors, expected,
                 hint="It was not written by this pack's memory node (or was edited). Start a new memory "
                      "(mode 'new') and save it again.")


# ---------------------------------------------------------------- planning with memory
def chapter_body_ids(tokenizer, ids, plan) -> list[int]:
    """The assistant answer of a chapter: its transcript up to the last event (re-rendered if edited)."""
    from ..stages.plan import forced_sequence

    return list(forced_sequence(tokenizer, ids, plan, []).ids)


def memory_prompt_ids(tokenizer, ids, memory: Optional[StoryMemory], instruction: str) -> Optional[list[int]]:
    """Prompt ids with the remembered chapters as earlier chat turns; None when there is nothing to add
    (then the caller uses the reference prompt unchanged)."""
    from ..stages.grammar import SYSTEM_MESSAGE, encode_user_turn

    if memory is None or memory.is_empty:
        return None
    out = tokenizer.encode(SYSTEM_MESSAGE, add_special_tokens=False) + history_ids(tokenizer, ids, memory)
    return out + encode_user_turn(tokenizer, instruction)   # user text escaped, as in the reference prompt


def history_ids(tokenizer, ids, memory: Optional[StoryMemory]) -> list[int]:
    """Only the remembered turns (no system message, no new instruction)."""
    from ..stages.grammar import encode_user_turn

    if memory is None or memory.is_empty:
        return []
    out: list[int] = []
    for plan in memory.chapter_plans():
        out += encode_user_turn(tokenizer, plan.instruction)      # earlier instructions are user text too
        out += chapter_body_ids(tokenizer, ids, plan)
        out += tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    return out


def with_history(tokenizer, ids, memory: Optional[StoryMemory], instruction: str, context=None):
    """The :class:`~audiostory_core.plan.PromptContext` for planning/teacher forcing with ``memory``.

    Without memory (or with an empty one) ``context`` is returned unchanged (None = reference prompt).
    With an audio ``context`` the remembered turns are inserted after its system message and its
    embedding positions are shifted accordingly.
    """
    from ..stages.grammar import SYSTEM_MESSAGE
    from ..stages.plan import PromptContext

    hist = history_ids(tokenizer, ids, memory)
    if not hist:
        return context
    if context is None:
        return PromptContext(prompt_ids=memory_prompt_ids(tokenizer, ids, memory, instruction), positions=[],
                             embeds=torch.empty(0))
    sys_ids = tokenizer.encode(SYSTEM_MESSAGE, add_special_tokens=False)
    pids = list(context.prompt_ids)
    cut = len(sys_ids) if pids[:len(sys_ids)] == sys_ids else 0
    return PromptContext(prompt_ids=pids[:cut] + hist + pids[cut:],
                         positions=[p + len(hist) if p >= cut else p for p in context.positions],
                         embeds=context.embeds)


# ---------------------------------------------------------------- event tokens with memory
@torch.no_grad()
def fuse_with_memory(heads, semantic: torch.Tensor, residual: torch.Tensor, bank: Optional[torch.Tensor],
                     strength: float) -> torch.Tensor:
    """``(sem + MHA(sem, [res ; bank], [res ; bank])) / scale``; the bank keys get a log(strength) bias.

    With no bank or strength 0 this is exactly ``heads.fuse`` (the reference fusion).
    """
    if bank is None or bank.numel() == 0 or strength <= 0:
        return heads.fuse(semantic, residual)
    e, n, d = semantic.shape
    m = residual.shape[1]
    bank = bank.to(residual.device, residual.dtype)
    q = semantic.permute(1, 0, 2)                                         # [N, E, D]
    kv = torch.cat([residual, bank.unsqueeze(0).expand(e, -1, -1)], dim=1).permute(1, 0, 2)  # [M+B, E, D]
    bias = torch.zeros(n, kv.shape[0], dtype=semantic.dtype, device=semantic.device)
    bias[:, m:] = math.log(strength)
    attn = heads.multihead_attention(q, kv, kv, attn_mask=bias)[0].permute(1, 0, 2)
    return (semantic + attn) / heads.t5_feature_scale


__all__ = ["StoryMemory", "RememberedEvent", "memory_prompt_ids", "with_history", "fuse_with_memory",
           "MEMORY_FORMAT"]
