"""Planner nodes: the LLM plans the story, or a plan is written/edited as JSON."""
from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io, ui

from ..audiostory_core.errors import InputError, PlanError
from ..audiostory_core.stages.grammar import build_instruction
from ..audiostory_core.stages.plan import PlanResult, generate_plan
from ..audiostory_core.tasks.memory import with_history
from . import comfy_models as cm
from .common import (CATEGORY, AudioContext, Memory, Plan, Planner, make_hooks, node_perf, reference_input,
                     reference_numerics, send_text)
from .widgets import setting_input
from .input_checks import describe_plan, instruction_problem, parse_plan_json, validate_plan_inputs
from .streaming import ReadableStream, TextThrottle
from .values import PlanBundle, planner_audio_context


class AudioStoryPlanner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryPlanner",
            display_name="AudioStory Planner",
            category=CATEGORY,
            description="The LLM plans the story: reasoning plus timed events (greedy, as the reference).",
            inputs=[
                Planner.Input("planner"),
                io.String.Input("instruction", multiline=True,
                                default="A thunderstorm rolls over a quiet farm at night.",
                                tooltip="The story to tell. The sentence 'The total duration is N seconds.' is added."),
                io.Float.Input("total_duration", default=12.0, min=1.0, max=600.0, step=0.5,
                               tooltip="Length of the whole story in seconds."),
                setting_input("max_new_tokens", tooltip="Upper bound on generated tokens (reasoning + events)."),
                Memory.Input("memory", optional=True,
                             tooltip="Earlier chapters: they are shown to the planner as earlier chat turns."),
                AudioContext.Input("audio_context", optional=True,
                                   tooltip="Audio to continue (AudioStory Audio Context). Its prompt is built for this "
                                           "node's instruction and total_duration."),
                io.Boolean.Input("unload_llm_after", default=False, optional=True,
                                 tooltip="Move the LLM off the GPU right after planning (it is also evicted "
                                         "automatically when the DiT needs the memory)."),
                reference_input(),
            ],
            outputs=[
                Plan.Output(display_name="plan"),
                io.String.Output(display_name="plan_json", tooltip="The plan as editable JSON."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, instruction=None):
        """Only the instruction (ComfyUI cannot tell an empty story); total_duration and max_new_tokens keep
        ComfyUI's own min/max checks."""
        return instruction_problem(instruction) or True

    @classmethod
    @reference_numerics
    def execute(cls, planner, instruction, total_duration, max_new_tokens, memory=None, audio_context=None,
                unload_llm_after=False, reference=False) -> io.NodeOutput:
        node_id = cls.hidden.unique_id
        result, ctx = run_planner(planner, instruction, float(total_duration), int(max_new_tokens), memory,
                                  audio_context, node_id, reference)
        if unload_llm_after:
            cm.unload_patcher(planner.llm_patcher)
        text = result.plan.to_json()
        send_text(node_id)(describe_plan(result.plan))
        return io.NodeOutput(PlanBundle(plan=result.plan, result=result, context=ctx), text, ui=ui.PreviewText(text))


def run_planner(planner, instruction: str, total_duration: float, max_new_tokens: int, memory, audio_context,
                node_id, reference: bool = False) -> tuple[PlanResult, object]:
    """Load the LLM through the memory manager, build the prompt (audio context and earlier chapters for
    THIS instruction and duration) and generate, streaming readable plan text onto the node."""
    msg = validate_plan_inputs(instruction, total_duration, max_new_tokens)
    if msg:
        raise InputError(msg)
    pl = planner.planner
    lead, ctx = planner_audio_context(audio_context, pl.tokenizer, instruction, total_duration)
    ctx = with_history(pl.tokenizer, pl.ids, memory, build_instruction(instruction, total_duration, lead), ctx)
    prompt_len = len(ctx.prompt_ids) if ctx is not None else 512
    cm.load([planner.llm_patcher, planner.heads_patcher], cm.llm_working_memory(pl.llm, prompt_len + max_new_tokens))
    stream = TextThrottle(ReadableStream(send_text(node_id)))
    result = generate_plan(pl, instruction, total_duration, lead=lead, max_new_tokens=max_new_tokens,
                           keep_hidden=True, context=ctx, hooks=make_hooks(node_id, stream),
                           **node_perf(reference).plan_kwargs)
    stream.flush()
    if result.hidden is not None:
        result.hidden = result.hidden.to(mm.intermediate_device())
    if not result.plan.events:
        problems = result.plan.problems
        raise PlanError("The planner produced no usable event" + (f" ({'; '.join(problems)})" if problems else "")
                        + ". Rephrase the instruction, raise max_new_tokens, or write the plan by hand with "
                          "AudioStoryPlanFromJSON.")
    return result, ctx


class AudioStoryPlanFromJSON(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryPlanFromJSON",
            display_name="AudioStory Plan from JSON",
            category=CATEGORY,
            description="Edit captions and durations of a plan, or write one by hand. Validated with the "
                        "location of any JSON error.",
            inputs=[
                io.String.Input("json", multiline=True,
                                default='{\n  "instruction": "A quiet farm at night.",\n  "reasoning": "",\n'
                                        '  "events": [\n    {"caption": "crickets chirp softly", "duration": 4.0}\n  ]\n}',
                                tooltip="A plan as printed by AudioStoryPlanner: instruction, reasoning, events "
                                        "[{caption, duration}]."),
            ],
            outputs=[
                Plan.Output(display_name="plan"),
                io.String.Output(display_name="plan_json"),
            ],
        )

    @classmethod
    def validate_inputs(cls, json=None):
        if json is None:
            return True
        try:
            parse_plan_json(json)
        except PlanError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, json) -> io.NodeOutput:
        plan = parse_plan_json(json)
        text = plan.to_json()
        return io.NodeOutput(PlanBundle(plan=plan), text, ui=ui.PreviewText(describe_plan(plan)))


NODES = [AudioStoryPlanner, AudioStoryPlanFromJSON]
