"""AudioStory Timeline: the plan as blocks on a time axis (web/timeline.js), between planner and event tokens.

The node's ``plan_json`` widget holds the plan JSON and is what the workflow saves and ``/prompt``
receives; the web extension only draws it and writes it back, so what runs is what the timeline shows.
The limits the timeline snaps, clamps and flags are served from this module (``GET /audiostory/timeline``)
and its inline errors come from the same check ``/prompt`` runs (``POST /audiostory/timeline/check``),
so the frontend never re-types a limit or a message.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from comfy_api.latest import io, ui

from ..audiostory_core import validation
from ..audiostory_core.errors import InputError, PlanError
from ..audiostory_core.models.config import FluxConfig, max_clip_seconds
from ..audiostory_core.tasks.reroll import format_events, parse_events
from .common import CATEGORY, Plan
from .input_checks import describe_plan, parse_plan_json
from .peaks import PEAK_PAIRS, PEAKS_KEY, SCORES_KEY
from .values import PlanBundle

# The release DiT renders audio_seq_len latent frames of HOP samples at the VAE's 44.1 kHz: one event's
# longest clip. The event-tokens node checks the loaded model's own window (and the crossfade tail) again.
CLIP_SECONDS = max_clip_seconds(FluxConfig().audio_seq_len)
SNAP_SECONDS = 0.1
DEFAULT_CROSSFADE = 3.0
EVENT_IN_MESSAGE = re.compile(r"events\[(\d+)\]")
# A plan of MAX_EVENTS events of MAX_CAPTION_CHARS each, with room for the reasoning and the transcript.
MAX_PLAN_CHARS = validation.MAX_EVENTS * (validation.MAX_CAPTION_CHARS + 200) + validation.MAX_INSTRUCTION_CHARS * 2


def timeline_limits() -> dict:
    """What the frontend needs to snap, clamp and flag; every number from its one Python definition."""
    return {"clip_seconds": CLIP_SECONDS, "snap_seconds": SNAP_SECONDS, "default_crossfade": DEFAULT_CROSSFADE,
            "min_event_seconds": validation.MIN_EVENT_SECONDS, "max_events": validation.MAX_EVENTS,
            "max_caption_chars": validation.MAX_CAPTION_CHARS, "max_total_seconds": validation.MAX_TOTAL_SECONDS,
            "max_plan_chars": MAX_PLAN_CHARS, "peak_pairs": PEAK_PAIRS, "peaks_key": PEAKS_KEY,
            "scores_key": SCORES_KEY}



def plan_problem(text: Any) -> Optional[str]:
    """The message ``/prompt`` refuses this plan with (None when it runs)."""
    if isinstance(text, str) and len(text) > MAX_PLAN_CHARS:
        return f"The plan JSON has {len(text)} characters; the limit is {MAX_PLAN_CHARS}."
    try:
        parse_plan_json(text, max_event_seconds=CLIP_SECONDS)
    except PlanError as e:
        return str(e)
    return None


def check_report(text: Any) -> dict:
    """``plan_problem`` plus the 0-based event it names (for the red block), for the check route."""
    msg = plan_problem(text)
    m = EVENT_IN_MESSAGE.search(msg or "")
    return {"ok": msg is None, "error": msg, "event": int(m.group(1)) if m else None}


class AudioStoryTimeline(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryTimeline",
            display_name="AudioStory Timeline",
            category=CATEGORY,
            description="The plan on a time axis: drag a block's right edge to change its duration, double-click "
                        "to edit its caption, add, delete and reorder events; selected blocks are the events to "
                        "re-roll.",
            inputs=[
                io.String.Input("plan_json", multiline=True,
                                default='{\n  "instruction": "A quiet farm at night.",\n  "reasoning": "",\n'
                                        '  "events": [\n    {"caption": "crickets chirp softly", "duration": 4.0},\n'
                                        '    {"caption": "a dog barks in the distance", "duration": 5.0}\n  ]\n}',
                                tooltip="The plan JSON the timeline shows and edits (what runs)."),
                io.String.Input("render_events", default="",
                                tooltip="Events selected on the timeline (1-based, e.g. 2,4): connect to the "
                                        "sampler's render_events to re-roll only these."),
            ],
            outputs=[
                Plan.Output(display_name="plan"),
                io.String.Output(display_name="plan_json"),
                io.String.Output(display_name="render_events", tooltip="The selected events, e.g. 2,4."),
            ],
        )

    @classmethod
    def validate_inputs(cls, plan_json=None, render_events=None):
        if plan_json is None:
            return True
        problem = plan_problem(plan_json)
        if problem is None and isinstance(render_events, str) and len(render_events) > 8 * validation.MAX_EVENTS:
            problem = f"render_events has {len(render_events)} characters; list at most {validation.MAX_EVENTS} events."
        elif problem is None and render_events:
            try:
                parse_events(render_events, len(parse_plan_json(plan_json).events))
            except InputError as e:
                problem = f"render_events: {e}"
        return problem or True

    @classmethod
    def execute(cls, plan_json, render_events="") -> io.NodeOutput:
        plan = parse_plan_json(plan_json, max_event_seconds=CLIP_SECONDS)
        rows = parse_events(render_events, len(plan.events)) if render_events.strip() else []
        return io.NodeOutput(PlanBundle(plan=plan), plan.to_json(), format_events(rows),
                             ui=ui.PreviewText(describe_plan(plan)))


SELECTION_OUTPUT = 2      # the Timeline's render_events output


def route_selection(prompt: Any) -> Any:
    """Hand each consumer of a Timeline's selection (its render_events output) the selection itself, and leave
    the Timeline an empty one (``/prompt``'s on-prompt hook; ``prompt`` is changed in place and returned).

    Why: ComfyUI's cache key of a node includes every ancestor's inputs, so a selection held by the Timeline
    would make everything downstream of the plan (the first render included) run again when a click only
    asks the re-roll sampler for other events. A selection the Timeline's own check refuses is left where it
    is, so ``/prompt`` still refuses it with the Timeline's message."""
    if not isinstance(prompt, dict):
        return prompt
    for tid, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") != "AudioStoryTimeline":
            continue
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        plan_json, selection = inputs.get("plan_json"), inputs.get("render_events", "")
        if not isinstance(plan_json, str) or not isinstance(selection, str) \
                or AudioStoryTimeline.validate_inputs(plan_json=plan_json, render_events=selection) is not True:
            continue
        count = len(parse_plan_json(plan_json).events)
        value = format_events(parse_events(selection, count)) if selection.strip() else ""
        for other in prompt.values():
            links = other.get("inputs") if isinstance(other, dict) else None
            for key, v in (links.items() if isinstance(links, dict) else ()):
                if isinstance(v, list) and len(v) == 2 and str(v[0]) == str(tid) and v[1] == SELECTION_OUTPUT:
                    links[key] = value
        inputs["render_events"] = ""
    return prompt


def _on_prompt(json_data: Any) -> Any:
    if isinstance(json_data, dict):
        route_selection(json_data.get("prompt"))
    return json_data


def register_routes() -> None:
    """The limits and the check behind the timeline's inline errors (the server of a running ComfyUI only)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    routes = PromptServer.instance.routes
    PromptServer.instance.add_on_prompt_handler(_on_prompt)

    @routes.get("/audiostory/timeline")
    async def limits(request):
        return web.json_response(timeline_limits())

    @routes.post("/audiostory/timeline/check")
    async def check(request):
        if (request.content_length or 0) > MAX_PLAN_CHARS * 4:
            return web.json_response({"ok": False, "error": "The plan JSON is too large.", "event": None})
        body = await request.text()
        return web.json_response(check_report(body))


register_routes()

NODES = [AudioStoryTimeline]
