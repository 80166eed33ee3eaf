"""One node for a first story: instruction and duration in, AUDIO out.

It expands (ComfyUI node expansion, ``GraphBuilder``) into the pack's own chain: Model Loader -> Planner
-> Event Tokens -> Sampler -> Decode, with each node's own defaults (the official sampler, 50 steps,
cfg 4, 3 s crossfade) and seeded noise. So it runs exactly what the step-by-step workflow runs, with
the same caching, progress and memory management; the models are chosen from the loader's folders.
"""
from __future__ import annotations

from comfy_api.latest import io
from comfy_execution.graph_utils import GraphBuilder

from .common import CATEGORY, model_roots
from .loader import AudioStoryModelLoader
from .input_checks import instruction_problem
from .output import AudioStoryDecode
from .planner import AudioStoryPlanner
from .sampler import AudioStorySampler
from .tokens import AudioStoryEventTokens


def widget_defaults(node: type[io.ComfyNode]) -> dict:
    """The default of every widget input of ``node`` that has one (read from its schema, defined there once)."""
    return {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}


def schema_input(node: type[io.ComfyNode], name: str):
    return next(i for i in node.define_schema().inputs if i.id == name)


class AudioStorySimple(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        roots = model_roots()
        duration = schema_input(AudioStoryPlanner, "total_duration")
        instruction = schema_input(AudioStoryPlanner, "instruction")
        return io.Schema(
            node_id="AudioStorySimple",
            display_name="AudioStory (simple)",
            category=CATEGORY,
            description="A whole story in one node: the planner writes timed events from the instruction, the DiT "
                        "renders them with seeded noise and the VAE crossfades them into one track. Runs the "
                        "pack's step-by-step nodes with their defaults.",
            inputs=[
                io.Combo.Input("root", options=roots, default=roots[0] if roots else None,
                               tooltip="The model folder in models/audiostory/ (as in AudioStory Model Loader)."),
                io.String.Input("instruction", multiline=True, default=instruction.default,
                                tooltip=instruction.tooltip),
                io.Float.Input("duration", default=duration.default, min=duration.min, max=duration.max,
                               step=duration.step, tooltip=duration.tooltip),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="A new seed gives a new take of the same plan."),
            ],
            outputs=[io.Audio.Output(display_name="audio")],
            enable_expand=True,
        )

    @classmethod
    def validate_inputs(cls, root, instruction=None):
        """The loader's check of the model folder (before anything runs) and the Planner's of the instruction."""
        ok = AudioStoryModelLoader.validate_inputs(root)
        if ok is not True:
            return ok
        return instruction_problem(instruction) or True

    @classmethod
    def execute(cls, root, instruction, duration, seed) -> io.NodeOutput:
        g = GraphBuilder()
        load = g.node("AudioStoryModelLoader", **{**widget_defaults(AudioStoryModelLoader), "root": root})
        plan = g.node("AudioStoryPlanner", **{**widget_defaults(AudioStoryPlanner), "planner": load.out(0),
                                               "instruction": instruction, "total_duration": duration})
        tokens = g.node("AudioStoryEventTokens", **{**widget_defaults(AudioStoryEventTokens),
                                                    "planner": load.out(0), "plan": plan.out(0)})
        samples = g.node("AudioStorySampler", **{**widget_defaults(AudioStorySampler), "model": load.out(1),
                                                 "events": tokens.out(0), "seed": seed, "noise": "seeded"})
        audio = g.node("AudioStoryDecode", **{**widget_defaults(AudioStoryDecode), "vae": load.out(2),
                                              "samples": samples.out(0), "events": tokens.out(0)})
        return io.NodeOutput(audio.out(0), expand=g.finalize())


NODES = [AudioStorySimple]
