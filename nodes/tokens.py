"""Event-token and consistency-memory nodes: a plan -> fused DiT conditioning, remembered across chapters."""
from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io, ui

from ..audiostory_core.errors import InputError
from ..audiostory_core.validation import check_texts
from ..audiostory_core.stages.event_tokens import event_tokens, reencoding_reasons
from ..audiostory_core.stages.plan import PlanResult, describe_reencoding
from ..audiostory_core.tasks.memory import StoryMemory, fuse_with_memory, with_history
from . import comfy_models as cm
from .common import CATEGORY, Events, Memory, Plan, Planner, make_hooks, reference_numerics
from .widgets import setting_input
from .input_checks import check_clip_lengths
from .layout import conditioning_pair, empty_latent
from .story_memory import MEMORY_MODES, memory_file, memory_for
from .values import EventsBundle, PlanBundle


log = logging.getLogger("AudioStory")


class AudioStoryEventTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryEventTokens",
            display_name="AudioStory Event Tokens",
            category=CATEGORY,
            description="Per-event semantic + residual query tokens, fused into DiT conditioning. Also gives "
                        "CONDITIONING and an empty latent for core KSampler / SamplerCustomAdvanced.",
            inputs=[
                Planner.Input("planner"),
                Plan.Input("plan"),
                setting_input("crossfade", step=0.1,
                              tooltip="Seconds of overlap between clips; every clip but the last is rendered "
                                      "this much longer. Use the same value in AudioStoryDecode."),
                Memory.Input("memory", optional=True,
                             tooltip="Remembered events of earlier chapters: their residual tokens join the "
                                     "fusion attention (empty or absent memory = reference tokens)."),
            ],
            outputs=[
                Events.Output(display_name="events"),
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                Memory.Output(display_name="memory", tooltip="The memory plus this chapter's events."),
                io.Latent.Output(display_name="empty_latent",
                                 tooltip="Zero audio latent [events, 64, frames] for core samplers."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    @reference_numerics
    def execute(cls, planner, plan, crossfade, memory=None) -> io.NodeOutput:
        events, new_memory, report = encode_events(planner, plan, float(crossfade), memory, cls.hidden.unique_id)
        pos, neg = conditioning_pair(events)
        log.info("AudioStory Event Tokens: %s", report)
        return io.NodeOutput(events, pos, neg, new_memory, empty_latent(events), ui=ui.PreviewText(report))


def encode_events(planner, plan, crossfade: float, memory, node_id) -> tuple[EventsBundle, StoryMemory, str]:
    """Plan -> fused event tokens (memory-attended when a memory is connected), the extended memory, and
    one line saying which events were re-encoded and why.

    An unedited plan reuses the query states captured while planning, so only the small bridge heads are
    loaded; otherwise the LLM re-encodes it by teacher forcing (loaded through the memory manager)."""
    if not isinstance(plan, PlanBundle):
        raise InputError("plan must come from AudioStoryPlanner or AudioStoryPlanFromJSON.")
    story = plan.plan
    check_clip_lengths(story.durations, crossfade, planner.max_clip_seconds)
    pl = planner.planner
    context, generated = plan.context, plan.result
    if memory is not None and not memory.is_empty and context is None:
        context = with_history(pl.tokenizer, pl.ids, memory, story.instruction, None)
        generated = None  # the plan was generated without this memory: re-encode it with the memory prompt
    reuse = generated is not None and generated.plan is story and generated.hidden is not None
    if reuse:
        report = "plan: as generated; every event keeps the states captured while planning"
    elif plan.context is None and context is not None:
        report = "plan: every event re-encoded: the memory of earlier chapters is part of its prompt"
    else:
        report = describe_reencoding(reencoding_reasons(pl, story, context))
    if reuse:
        cm.load([planner.heads_patcher])
        generated = PlanResult(plan=story, prompt_ids=generated.prompt_ids, hidden=generated.hidden.to(pl.device))
    else:
        tokens_needed = (len(context.prompt_ids) if context is not None else 512) + len(story.transcript_ids or []) \
            + 80 * len(story.events)
        cm.load([planner.llm_patcher, planner.heads_patcher], cm.llm_working_memory(pl.llm, tokens_needed))
    tokens = event_tokens(pl, story, generated, make_hooks(node_id), context)
    fused = tokens.fused
    if memory is not None and not memory.is_empty:
        fused = fuse_with_memory(pl.heads, tokens.semantic, tokens.residual, memory.residual_bank(), memory.strength)
    dev = mm.intermediate_device()
    tokens.semantic, tokens.residual, tokens.fused = (t.to(dev) for t in (tokens.semantic, tokens.residual,
                                                                           tokens.fused))
    events = EventsBundle(tokens=tokens, fused=fused.detach().to(dev), null_embedding=planner.null_embedding,
                          crossfade=crossfade, audio_seq_len=planner.audio_seq_len, plan=story,
                          vae_sample_rate=planner.vae_sample_rate)
    new_memory = (memory if memory is not None else StoryMemory()).add_chapter(story, tokens.semantic, tokens.residual)
    return events, new_memory, report


class AudioStoryConsistencyMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryConsistencyMemory",
            display_name="AudioStory Consistency Memory",
            category=CATEGORY,
            description="Cross-chapter memory: start empty, load from or save to a file (in the output folder), "
                        "keep the last K events. Chapter 2 keeps chapter 1's sound world.",
            inputs=[
                Memory.Input("memory", optional=True),
                io.Combo.Input("mode", options=list(MEMORY_MODES), default="new",
                               tooltip="new: empty memory; pass_through: apply window/strength; load: read the "
                                       "file; save: write the input memory to the file and pass it on."),
                io.String.Input("path", default="audiostory/memory/story",
                                tooltip="File relative to the ComfyUI output folder (.safetensors is added)."),
                io.Int.Input("window", default=8, min=1, max=256,
                             tooltip="Keep the last K remembered events."),
                io.Float.Input("strength", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Attention weight of remembered tokens in the fusion (0 = off)."),
            ],
            outputs=[Memory.Output(display_name="memory")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, mode=None, path=None, **kwargs):
        if mode == "load":
            try:
                f = memory_file(folder_paths.get_output_directory(), path)
                return f"{f}:{os.path.getmtime(f)}"
            except (OSError, InputError):
                return float("nan")
        return mode

    @classmethod
    def execute(cls, mode, path, window, strength, memory=None) -> io.NodeOutput:
        check_texts(path=path)
        f = memory_file(folder_paths.get_output_directory(), path) if mode in ("load", "save") else None
        out = memory_for(mode, memory, f, int(window), float(strength))
        return io.NodeOutput(out, ui=ui.PreviewText(out.recap()))


NODES = [AudioStoryEventTokens, AudioStoryConsistencyMemory]
