"""Audio continuation nodes (ComfyUI V3): AUDIO -> AUDIOSTORY_AUDIO_CONTEXT for the Planner, and the join.

The Planner rebuilds the context's prompt for its own instruction and total_duration (the audio tokens
sit in the prompt next to the instruction), so the two never have to be kept in sync by hand. This node's
instruction/total_duration only pre-build a prompt context for consumers that read ``.context`` directly.
"""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..audiostory_core.models.config import find_audiostory_dir
from ..audiostory_core.tasks.continuation import (LONG_INPUT, MODES, ResamplerSpec, WhisperFeatures,
                                            resampler_status)
from ..audiostory_core.errors import InputError, ModelFilesError
from ..audiostory_core.models.folders import WHISPER
from ..audiostory_core.validation import check_texts
from . import comfy_models as cm
from . import model_choices
from .common import AudioContext, Planner, model_folders
from .layout import audio_dict, audio_from_dict
from .model_roots import resolve_model_root
from .widgets import setting_input
from .audio_context import checkpoint_tensors, join_continuation, make_audio_context

CATEGORY = "audio/AudioStory/continuation"


class AudioStoryAudioContext(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryAudioContext",
            display_name="AudioStory Audio Context",
            category=CATEGORY,
            description="Understands the audio to continue: Whisper features pooled by the checkpoint's "
                        "whisper_resampler_llava overwrite placeholder tokens in the prompt. Checkpoints without "
                        "trained audio-understanding weights use your text description instead.",
            inputs=[
                Planner.Input("planner"),
                io.Audio.Input("audio", tooltip="Mono or stereo, 8-192 kHz, at most 30 s (or long_input=last)."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="Optional. The Planner uses its own instruction and rebuilds the "
                                        "prompt for it; this only pre-builds a context for other consumers."),
                io.Float.Input("total_duration", default=12.0, min=1.0, max=600.0, step=0.5,
                               tooltip="Optional, like instruction: the Planner's total_duration is what counts."),
                io.Combo.Input("understanding", options=list(MODES), default="auto"),
                model_choices.combo("whisper", WHISPER, "The Whisper encoder (openai/whisper-large-v3)."),
                io.String.Input("audio_description", default="", multiline=True,
                                tooltip="Words describing the input (the fallback, or extra help)."),
                io.Combo.Input("long_input", options=list(LONG_INPUT), default="error",
                               tooltip="Input longer than 30 s: refuse, or understand its last 30 s."),
                io.String.Input("placeholder", default="<aud>,<aud_{:05d}>,</aud>",
                                tooltip="open,slot,close tokens of the audio placeholders."),
                io.AudioEncoder.Input("audio_encoder", optional=True,
                                      tooltip="Optional: core's Whisper-large-v3 encoder (AudioEncoderLoader) instead "
                                              "of the 'whisper' folder; wav2vec2 encoders do not fit and are refused."),
            ],
            outputs=[AudioContext.Output("audio_context", display_name="audio_context")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, planner, audio, instruction, total_duration, understanding, whisper, audio_description,
                long_input, placeholder, audio_encoder=None) -> io.NodeOutput:
        check_texts(instruction=instruction, audio_description=audio_description, placeholder=placeholder)
        wave, sr = audio_from_dict(audio, "audio")
        pl = planner.planner
        tensors = checkpoint_tensors(find_audiostory_dir(resolve_model_root(model_folders(), planner.root_name))
                                     / "pytorch_model.bin")
        status, _ = resampler_status(ResamplerSpec.from_config(pl.config.raw), tensors)
        w = whisper_encoder(understanding, status, whisper, audio_description, audio_encoder)
        cm.load([planner.llm_patcher, planner.heads_patcher])
        ctx = make_audio_context(pl, wave, sr, tensors=tensors, whisper=w, description=audio_description,
                                 mode=understanding, long_input=long_input, placeholder=placeholder,
                                 instruction=instruction, total_duration=float(total_duration))
        msg = f"understanding: {ctx.mode}" + "".join(f"\nnote: {n}" for n in ctx.notes)
        return io.NodeOutput(ctx, ui=ui.PreviewText(msg))


def whisper_encoder(understanding: str, status: str, whisper: str, audio_description: str, audio_encoder=None):
    """The Whisper encoder for this run, or None when the text fallback is used.

    Core's AUDIO_ENCODER when one is connected (managed by core), else the ``whisper`` folder, built once
    and kept between runs under a ModelPatcher and loaded by the memory manager (one 30 s window: 1500
    frames). A missing folder is an error only when Whisper is required (no text to fall back on)."""
    if understanding == "text" or status != "trained":
        return None
    if audio_encoder is not None:
        return cm.CoreWhisperEncoder(audio_encoder)
    try:
        folder = model_choices.resolve(WHISPER, whisper)
        w, patcher = cm.cached_aux_model("Whisper", (str(folder),),
                                         lambda dev: WhisperFeatures.from_pretrained(folder, device=dev),
                                         lambda wf: wf.encoder)
    except ModelFilesError:
        if understanding == "whisper" or not audio_description.strip():
            raise
        return None
    cm.load([patcher], cm.aux_working_memory(w.encoder, 1500, kv_cache=False))
    return w


class AudioStoryContinuationJoin(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryContinuationJoin",
            display_name="AudioStory Continuation Join",
            category=CATEGORY,
            description="The input audio followed by the continuation, joined with the story's crossfade "
                        "(or the continuation alone).",
            inputs=[
                AudioContext.Input("audio_context"),
                io.Audio.Input("continuation", tooltip="The decoded story (AudioStory Decode)."),
                setting_input("crossfade", step=0.1),
                setting_input("crossfade_curve", "curve"),
                io.Combo.Input("output", options=["joined", "continuation"], default="joined"),
            ],
            outputs=[io.Audio.Output("audio", display_name="audio")],
        )

    @classmethod
    def execute(cls, audio_context, continuation, crossfade, curve, output) -> io.NodeOutput:
        if audio_context is None or not hasattr(audio_context, "audio"):
            raise InputError("audio_context must come from AudioStoryAudioContext.")
        story, sr = audio_from_dict(continuation, "continuation")
        out = join_continuation(audio_context, story, sr, float(crossfade), curve, output)
        return io.NodeOutput(audio_dict(out, sr))


NODES = [AudioStoryAudioContext, AudioStoryContinuationJoin]
