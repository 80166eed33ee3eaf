"""Score node: CLAP score of every event against its caption, a table on the node, and the events to re-roll."""
from __future__ import annotations

from pathlib import Path

import torch

import comfy.model_management as mm
from comfy_api.latest import io, ui

from ..audiostory_core.errors import InputError
from ..audiostory_core.models.folders import CLAP
from ..audiostory_core.tasks.reroll import format_events
from ..audiostory_core.tasks.score import SELECT_MODES, ClapScorer, score_story, scores_table, select_events
from . import comfy_models as cm
from . import model_choices
from .common import CATEGORY, Events, reference_numerics
from .layout import audio_from_dict
from .peaks import scores_ui
from .values import EventsBundle

_LOADED: dict[str, tuple[float, ClapScorer, object]] = {}   # folder -> (mtime, scorer, ModelPatcher)


class ClapContainer(torch.nn.Module):
    """Container so the transformers model (whose ``device`` is read-only) is one ModelPatcher-managed module."""

    def __init__(self, clap):
        super().__init__()
        self.clap = clap


def clap_scorer(folder: Path) -> tuple[ClapScorer, object]:
    """Load once per folder (reloaded when its config changes), under a whole-model ModelPatcher."""
    key = str(folder.resolve())
    mtime = (folder / "config.json").stat().st_mtime
    hit = _LOADED.get(key)
    if hit is None or hit[0] != mtime:
        scorer = ClapScorer.from_pretrained(folder, device="cpu")
        patcher = cm.FullLoadPatcher(ClapContainer(scorer.model), load_device=mm.get_torch_device(),
                                     offload_device=mm.unet_offload_device())
        hit = _LOADED[key] = (mtime, scorer, patcher)
    return hit[1], hit[2]


class AudioStoryScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryScore",
            display_name="AudioStory Score (CLAP)",
            category=CATEGORY,
            description="CLAP cosine score of each event's part of the story against its caption, and of the whole "
                        "story against the instruction. Shows a table and outputs the events to re-roll (connect "
                        "it to a second sampler's render_events). Scores mean something only with the real CLAP.",
            inputs=[
                io.Audio.Input("audio", tooltip="The story from AudioStoryDecode."),
                Events.Input("events", tooltip="The events the story was rendered from (captions, durations, crossfade)."),
                model_choices.combo("clap", CLAP, "The CLAP model (laion/clap-htsat-unfused or "
                                                  "larger_clap_general)."),
                io.Combo.Input("select", options=list(SELECT_MODES), default="weakest",
                               tooltip="weakest: the lowest-scoring event(s); below_threshold: every event under "
                                       "the threshold (may be none)."),
                io.Float.Input("threshold", default=0.25, min=-1.0, max=1.0, step=0.01),
                io.Int.Input("count", default=1, min=1, max=64, tooltip="How many events 'weakest' picks."),
            ],
            outputs=[
                io.String.Output(display_name="table"),
                io.String.Output(display_name="events", tooltip="Events to re-roll, 1-based ('2,4'); empty = none."),
                io.Float.Output(display_name="story_score"),
            ],
        )

    @classmethod
    @reference_numerics
    def execute(cls, audio, events, clap, select, threshold, count) -> io.NodeOutput:
        if not isinstance(events, EventsBundle) or events.plan is None:
            raise InputError("events must come from AudioStoryEventTokens (they carry the captions).")
        wave, sr = audio_from_dict(audio, "audio")
        scorer, patcher = clap_scorer(model_choices.resolve(CLAP, clap))
        cm.load([patcher])
        scorer.device = patcher.load_device
        mm.throw_exception_if_processing_interrupted()
        scores = score_story(scorer, events.plan, wave, sr, events.crossfade)
        picked = format_events(select_events(scores, select, float(threshold), int(count)))
        table = scores_table(events.plan, scores, float(threshold)) + f"\nre-roll: {picked or 'none'}"
        story = scores.story if scores.story is not None else 0.0
        # the table on the node, and each event's score for the Timeline widget's blocks
        shown = {**ui.PreviewText(table).as_dict(),
                 **scores_ui([e.caption for e in events.plan.events], events.durations, scores.events, scores.story)}
        return io.NodeOutput(table, picked, story, ui=shown)


NODES = [AudioStoryScore]
