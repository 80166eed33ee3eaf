"""The AudioStory nodes (ComfyUI V3 API). Thin adapters: the work happens in ``audiostory_core``,
value objects and validation live in ``logic.py``, the ComfyUI model wrappers in ``comfy_models.py``.

Node ids are a public contract: never rename them, never reorder or remove inputs; append optional
inputs only.
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
from comfy_api.latest import InputImpl, io, ui

from ..audiostory_core.audio import crossfade_concat, decode_clips, resample, write_audio
from ..audiostory_core.config import locate
from ..audiostory_core.errors import InputError, PlanError
from ..audiostory_core.event_tokens import clip_seconds, event_tokens
from ..audiostory_core.grammar import build_instruction
from ..audiostory_core.loading import load_models
from ..audiostory_core.memory import StoryMemory, fuse_with_memory, with_history
from ..audiostory_core.plan import PlanResult, generate_plan
from ..audiostory_core.progress import Hooks
from ..audiostory_core.sampling import make_noise, reference_sigmas, sample_latents
from . import comfy_models as cm
from .logic import (CROSSFADE_CURVES, DTYPE_CHOICES, EXISTING_AUDIO, MEMORY_MODES, MUX_POLICIES, NOISE_CHOICES,
                    REFERENCE_SAMPLER, SAVE_FORMATS, EventsBundle, PlanBundle, PlannerHandle, StageProgress,
                    TextThrottle, audio_dict, audio_from_dict, check_clip_lengths, check_latent_matches,
                    conditioning_pair, describe_plan, dtype_from_choice, empty_latent, from_comfy_latent,
                    list_model_roots, memory_file, memory_for, no_roots_message, pad_clips, parse_plan_json,
                    planner_audio_context, resolve_model_root, safe_prefix, to_comfy_latent, validate_plan_inputs,
                    workflow_metadata, write_flac_with_metadata)

log = logging.getLogger("AudioStory")

MODEL_FOLDER = "audiostory"
folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))

CATEGORY = "audio/AudioStory"

Planner = io.Custom("AUDIOSTORY_PLANNER")
Plan = io.Custom("STORY_PLAN")
Events = io.Custom("AUDIOSTORY_EVENTS")
Memory = io.Custom("STORY_MEMORY")
AudioContext = io.Custom("AUDIOSTORY_AUDIO_CONTEXT")


# ---------------------------------------------------------------- shared helpers
def reference_numerics(fn):
    """Run a node body outside ``torch.inference_mode`` (with ``no_grad``).

    ComfyUI executes nodes under ``torch.inference_mode()``; tensors created there (the loaded weights
    included) take slightly different CPU kernels (~1e-6 differences). Running the AudioStory stages in
    plain ``no_grad`` mode makes the node path bit-identical to the core library / CLI.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


def _interrupt() -> bool:
    """Core ``Hooks.interrupt``: raises ComfyUI's InterruptProcessingException (Cancel) directly."""
    mm.throw_exception_if_processing_interrupted()
    return False


def make_hooks(node_id=None, text=None) -> Hooks:
    progress = StageProgress(lambda total: comfy.utils.ProgressBar(total, node_id=node_id))
    return Hooks(progress=progress, interrupt=_interrupt, text=text)


def _send_text(node_id):
    def send(text: str) -> None:
        try:
            from server import PromptServer

            if PromptServer.instance is not None and node_id is not None:
                PromptServer.instance.send_progress_text(text, node_id)
        except Exception:  # a UI message must never break generation
            pass
    return send


def llm_dtype(device) -> torch.dtype:
    """The planner LLM is a plain transformers model (no manual cast), so 'auto' asks ComfyUI whether the
    device computes fp16/bf16 well (fp32 on CPU); --fp16/bf16/fp32-text-enc flags are honoured."""
    from comfy.cli_args import args

    if args.fp16_text_enc or args.bf16_text_enc or args.fp32_text_enc:
        return mm.text_encoder_dtype(device)
    if mm.should_use_fp16(device):
        return torch.float16
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def model_folders() -> list[str]:
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def model_roots() -> list[str]:
    return list_model_roots(model_folders())


# ---------------------------------------------------------------- loader
class AudioStoryModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        roots = model_roots()
        return io.Schema(
            node_id="AudioStoryModelLoader",
            display_name="AudioStory Model Loader",
            category=CATEGORY,
            description="Loads an AudioStory model root from models/audiostory/: the LLM planner, the DiT as a "
                        "ComfyUI MODEL and the Oobleck VAE as a ComfyUI VAE, each under ComfyUI's memory manager.",
            inputs=[
                io.Combo.Input("root", options=roots, default=roots[0] if roots else None,
                               tooltip="A folder in models/audiostory/ holding AudioStory-3B/, Flux_detokenizer/, "
                                       "Qwen2.5-3B-Instruct/ and flan-t5-large/."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="auto: chosen per component by ComfyUI for the current device (fp32 on CPU)."),
            ],
            outputs=[
                Planner.Output(display_name="planner", tooltip="LLM, tokenizer, bridge heads and null embedding."),
                io.Model.Output(display_name="model", tooltip="The audio DiT as a flow-matching ComfyUI MODEL."),
                io.Vae.Output(display_name="vae", tooltip="The Oobleck VAE (works with VAEDecodeAudio too)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, root, dtype):
        roots = model_roots()
        if not roots:
            return no_roots_message(model_folders())
        if root not in roots:
            return f"Model folder {root!r} is not in models/audiostory/; available: {', '.join(roots)}."
        if dtype not in DTYPE_CHOICES:
            return f"dtype must be one of {', '.join(DTYPE_CHOICES)}"
        return True

    @classmethod
    @reference_numerics
    def execute(cls, root, dtype) -> io.NodeOutput:
        forced = dtype_from_choice(dtype)
        paths = locate(resolve_model_root(model_folders(), root))
        dev = mm.get_torch_device()
        want = {
            "planner": (forced or llm_dtype(mm.text_encoder_device()), mm.text_encoder_offload_device()),
            "dit": (forced or mm.unet_dtype(device=dev, supported_dtypes=[torch.float16, torch.bfloat16,
                                                                         torch.float32]), mm.unet_offload_device()),
            "vae": (forced or mm.vae_dtype(mm.vae_device(), [torch.float16, torch.bfloat16, torch.float32]),
                    mm.vae_offload_device()),
        }
        groups: dict = {}
        for comp, key in want.items():
            groups.setdefault(key, []).append(comp)
        loaded = {}
        for (dt, device), comps in groups.items():
            res = load_models(paths, dt, device, planner="planner" in comps, dit="dit" in comps, vae="vae" in comps)
            for comp in comps:
                loaded[comp] = res
        planner = loaded["planner"].planner
        dit = loaded["dit"].dit
        vae = loaded["vae"].vae
        llm_p, heads_p = cm.planner_patchers(planner)
        handle = PlannerHandle(planner=planner, null_embedding=loaded["dit"].null_embedding.detach().float().cpu(),
                               audio_seq_len=int(dit.config.audio_seq_len),
                               vae_sample_rate=int(vae.config.sampling_rate), root_name=root,
                               llm_patcher=llm_p, heads_patcher=heads_p)
        model = cm.dit_model_patcher(dit, want["dit"][0])
        comfy_vae = cm.AudioStoryVAE(vae, want["vae"][0])
        return io.NodeOutput(handle, model, comfy_vae)


# ---------------------------------------------------------------- planner
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
                io.Int.Input("max_new_tokens", default=1600, min=16, max=8192,
                             tooltip="Upper bound on generated tokens (reasoning + events)."),
                Memory.Input("memory", optional=True,
                             tooltip="Earlier chapters: they are shown to the planner as earlier chat turns."),
                AudioContext.Input("audio_context", optional=True,
                                   tooltip="Audio to continue (AudioStory Audio Context). Its prompt is built for this "
                                           "node's instruction and total_duration."),
                io.Boolean.Input("unload_llm_after", default=False, optional=True,
                                 tooltip="Move the LLM off the GPU right after planning (it is also evicted "
                                         "automatically when the DiT needs the memory)."),
            ],
            outputs=[
                Plan.Output(display_name="plan"),
                io.String.Output(display_name="plan_json", tooltip="The plan as editable JSON."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, instruction=None, total_duration=None, max_new_tokens=None, **kwargs):
        msg = validate_plan_inputs(instruction, total_duration, max_new_tokens)
        return msg if msg else True

    @classmethod
    @reference_numerics
    def execute(cls, planner, instruction, total_duration, max_new_tokens, memory=None, audio_context=None,
                unload_llm_after=False) -> io.NodeOutput:
        msg = validate_plan_inputs(instruction, total_duration, max_new_tokens)
        if msg:
            raise InputError(msg)
        pl = planner.planner
        mm.load_models_gpu([planner.llm_patcher, planner.heads_patcher])
        # the audio context is rebuilt for THIS instruction and duration (not the one it was made with)
        lead, ctx = planner_audio_context(audio_context, pl.tokenizer, instruction, float(total_duration))
        instr = build_instruction(instruction, float(total_duration), lead)
        ctx = with_history(pl.tokenizer, pl.ids, memory, instr, ctx)
        node_id = cls.hidden.unique_id
        stream = TextThrottle(_send_text(node_id))
        result = generate_plan(pl, instruction, float(total_duration), lead=lead, max_new_tokens=int(max_new_tokens),
                               keep_hidden=True, context=ctx, hooks=make_hooks(node_id, stream))
        stream.flush()
        if result.hidden is not None:
            result.hidden = result.hidden.to(mm.intermediate_device())
        if unload_llm_after:
            cm.unload_patcher(planner.llm_patcher)
        plan = result.plan
        if not plan.events:
            raise PlanError("The planner produced no usable event"
                            + (f" ({'; '.join(plan.problems)})" if plan.problems else "")
                            + ". Rephrase the instruction, raise max_new_tokens, or write the plan by hand with "
                              "AudioStoryPlanFromJSON.")
        text = plan.to_json()
        _send_text(node_id)(describe_plan(plan))
        return io.NodeOutput(PlanBundle(plan=plan, result=result, context=ctx), text, ui=ui.PreviewText(text))


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


# ---------------------------------------------------------------- event tokens
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
                io.Float.Input("crossfade", default=3.0, min=0.0, max=10.0, step=0.1,
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
    def validate_inputs(cls, crossfade=None, **kwargs):
        if crossfade is not None and (crossfade < 0 or math.isnan(crossfade)):
            return f"crossfade must be >= 0 s, got {crossfade}"
        return True

    @classmethod
    @reference_numerics
    def execute(cls, planner, plan, crossfade, memory=None) -> io.NodeOutput:
        if not isinstance(plan, PlanBundle):
            raise InputError("plan must come from AudioStoryPlanner or AudioStoryPlanFromJSON.")
        story = plan.plan
        check_clip_lengths(story.durations, float(crossfade), planner.max_clip_seconds)
        pl = planner.planner
        context, generated = plan.context, plan.result
        if memory is not None and not memory.is_empty and context is None:
            context = with_history(pl.tokenizer, pl.ids, memory, story.instruction, None)
            generated = None  # the plan was generated without this memory: re-encode it with the memory prompt
        reuse = generated is not None and generated.plan is story and generated.hidden is not None
        mm.load_models_gpu([planner.heads_patcher] if reuse else [planner.llm_patcher, planner.heads_patcher])
        if reuse:
            generated = PlanResult(plan=story, prompt_ids=generated.prompt_ids,
                                   hidden=generated.hidden.to(pl.device))
        hooks = make_hooks(cls.hidden.unique_id)
        tokens = event_tokens(pl, story, generated, hooks, context)
        if memory is not None and not memory.is_empty:
            fused = fuse_with_memory(pl.heads, tokens.semantic, tokens.residual, memory.residual_bank(),
                                     memory.strength)
        else:
            fused = tokens.fused
        dev = mm.intermediate_device()
        tokens.semantic, tokens.residual = tokens.semantic.to(dev), tokens.residual.to(dev)
        tokens.fused = tokens.fused.to(dev)
        events = EventsBundle(tokens=tokens, fused=fused.detach().to(dev), null_embedding=planner.null_embedding,
                              crossfade=float(crossfade), audio_seq_len=planner.audio_seq_len, plan=story,
                              vae_sample_rate=planner.vae_sample_rate)
        new_memory = (memory if memory is not None else StoryMemory()).add_chapter(story, tokens.semantic,
                                                                                    tokens.residual)
        pos, neg = conditioning_pair(events)
        return io.NodeOutput(events, pos, neg, new_memory, empty_latent(events))


# ---------------------------------------------------------------- memory
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
        f = memory_file(folder_paths.get_output_directory(), path) if mode in ("load", "save") else None
        out = memory_for(mode, memory, f, int(window), float(strength))
        return io.NodeOutput(out, ui=ui.PreviewText(out.recap()))


# ---------------------------------------------------------------- sampling
class AudioStoryNoiseGenerator:
    """A NOISE for SamplerCustomAdvanced with AudioStory's noise (reference or seeded), comfy layout."""

    def __init__(self, mode: str, seed: int):
        self.mode, self.seed = mode, int(seed)

    def generate_noise(self, input_latent):
        s = input_latent["samples"]
        if s.dim() != 3:
            raise InputError(f"AudioStory noise needs an audio latent [events, 64, frames], got {tuple(s.shape)}")
        return to_comfy_latent(make_noise(self.mode, s.shape[0], s.shape[2], self.seed, channels=s.shape[1]))


class AudioStoryNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryNoise",
            display_name="AudioStory Noise",
            category=CATEGORY,
            description="The reference noise (or per-event seeded noise) for SamplerCustomAdvanced, so a core "
                        "sampler reproduces AudioStorySampler exactly.",
            inputs=[
                io.Combo.Input("noise", options=list(NOISE_CHOICES), default="reference",
                               tooltip="reference: seed 0 for every clip (official); seeded: seed + event index."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
            ],
            outputs=[io.Noise.Output(display_name="noise")],
        )

    @classmethod
    def execute(cls, noise, seed) -> io.NodeOutput:
        return io.NodeOutput(AudioStoryNoiseGenerator(noise, seed))


class AudioStorySampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStorySampler",
            display_name="AudioStory Sampler",
            category=CATEGORY,
            description="Samples every event's clip at once with the DiT. reference_euler reproduces the official "
                        "sampler; any ComfyUI sampler/scheduler (or SAMPLER/SIGMAS sockets) can be used instead.",
            inputs=[
                io.Model.Input("model"),
                Events.Input("events"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Used by noise=seeded (clip i gets seed+i) and by stochastic samplers."),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance against the null embedding (1 = off)."),
                io.Combo.Input("sampler_name", options=[REFERENCE_SAMPLER] + list(comfy.samplers.KSampler.SAMPLERS),
                               default=REFERENCE_SAMPLER),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Ignored by reference_euler (σ = linspace(1, 1/steps, steps), then 0)."),
                io.Combo.Input("noise", options=list(NOISE_CHOICES), default="reference",
                               tooltip="reference: the official noise (seed 0 for every clip); seeded: seed + i."),
                io.Sampler.Input("sampler", optional=True, tooltip="Overrides sampler_name."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Overrides steps and scheduler."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Audio latent [events, 64, frames].")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    @reference_numerics
    def execute(cls, model, events, seed, steps, cfg, sampler_name, scheduler, noise, sampler=None,
                sigmas=None) -> io.NodeOutput:
        dit = cm.dit_of(model)
        if dit is None:
            raise InputError("model must be the MODEL output of AudioStoryModelLoader.")
        if not isinstance(events, EventsBundle):
            raise InputError("events must come from AudioStoryEventTokens.")
        e, t = events.count, events.audio_seq_len
        if int(dit.config.audio_seq_len) != t:
            raise InputError(f"The events were made for clips of {t} frames but this DiT renders "
                             f"{dit.config.audio_seq_len}: use the planner and model of the same loader.")
        x = make_noise(noise, e, t, int(seed))
        node_id = cls.hidden.unique_id
        if sampler_name == REFERENCE_SAMPLER and sampler is None and sigmas is None and cm.is_unpatched(model):
            mm.load_models_gpu([model])
            lat = sample_latents(dit, events.fused, events.null_embedding, events.clip_seconds, steps=int(steps),
                                 guidance=float(cfg), initial_noise=x, sampler="euler", hooks=make_hooks(node_id))
            samples = to_comfy_latent(lat.float().to(mm.intermediate_device()))
        else:
            pos, neg = conditioning_pair(events)
            if sigmas is None:
                if sampler_name == REFERENCE_SAMPLER:
                    sigmas = torch.tensor(list(reference_sigmas(int(steps))) + [0.0], dtype=torch.float32)
                else:
                    sigmas = comfy.samplers.KSampler(model, steps=int(steps), device=model.load_device,
                                                     sampler=sampler_name, scheduler=scheduler, denoise=1.0,
                                                     model_options=model.model_options).sigmas
            if sampler is None:
                sampler = comfy.samplers.sampler_object("euler" if sampler_name == REFERENCE_SAMPLER else sampler_name)
            latent = torch.zeros(e, 64, t)
            callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
            samples = comfy.sample.sample_custom(model, to_comfy_latent(x), float(cfg), sampler, sigmas, pos, neg,
                                                 latent, callback=callback,
                                                 disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=int(seed))
        return io.NodeOutput({"samples": samples, "type": "audio"})


# ---------------------------------------------------------------- decode
class AudioStoryDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryDecode",
            display_name="AudioStory Decode",
            category=CATEGORY,
            description="VAE-decodes every clip, trims it to its event, resamples and crossfades the story.",
            inputs=[
                io.Vae.Input("vae"),
                io.Latent.Input("samples"),
                Events.Input("events"),
                io.Float.Input("crossfade", default=3.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Seconds of overlap; the same value as in AudioStoryEventTokens."),
                io.Int.Input("sample_rate", default=32000, min=0, max=192000,
                             tooltip="32000 = reference output rate; 0 = the VAE's own rate (44100)."),
                io.Combo.Input("curve", options=list(CROSSFADE_CURVES), default="linear", optional=True,
                               tooltip="linear = reference; equal_power keeps loudness through the fade."),
            ],
            outputs=[
                io.Audio.Output(display_name="audio", tooltip="The whole story."),
                io.Audio.Output(display_name="clips", tooltip="Every event's clip, zero-padded into one batch."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, crossfade=None, sample_rate=None, **kwargs):
        if crossfade is not None and crossfade < 0:
            return f"crossfade must be >= 0 s, got {crossfade}"
        if sample_rate is not None and 0 < sample_rate < 8000:
            return f"sample_rate must be 0 (VAE rate) or at least 8000 Hz, got {sample_rate}"
        return True

    @classmethod
    @reference_numerics
    def execute(cls, vae, samples, events, crossfade, sample_rate, curve="linear") -> io.NodeOutput:
        if not isinstance(events, EventsBundle):
            raise InputError("events must come from AudioStoryEventTokens.")
        lat = samples["samples"]
        check_latent_matches(lat, events)
        if abs(float(crossfade) - events.crossfade) > 1e-9:
            log.warning("AudioStoryDecode crossfade %.3g s differs from the %.3g s the clips were rendered for.",
                        crossfade, events.crossfade)
        secs = clip_seconds(events.durations, float(crossfade))
        hooks = make_hooks(cls.hidden.unique_id)
        if isinstance(vae, cm.AudioStoryVAE):
            mm.load_models_gpu([vae.patcher], force_full_load=True)
            clips = decode_clips(vae.diffusers_vae, from_comfy_latent(lat), secs, hooks)
            sr_vae = vae.sample_rate
        else:  # any other comfy audio VAE (e.g. Stable Audio's): decode through its interface
            sr_vae = 44100
            clips = []
            for i in range(lat.shape[0]):
                hooks.check()
                wav = vae.decode(lat[i:i + 1]).movedim(-1, 1)[0].float().cpu()
                clips.append(wav[:, : int(secs[i] * sr_vae)])
                hooks.report("decode", i + 1, lat.shape[0])
        sr = sr_vae if int(sample_rate) == 0 else int(sample_rate)
        clips = [resample(c, sr_vae, sr) for c in clips]
        story = crossfade_concat(clips, sr, float(crossfade), curve)
        return io.NodeOutput(audio_dict(story, sr), audio_dict(pad_clips(clips), sr))


# ---------------------------------------------------------------- mux
class AudioStoryMuxVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryMuxVideo",
            display_name="AudioStory Mux Audio onto Video",
            category=CATEGORY,
            description="Puts the audio on a video: the video track is stream-copied (no re-encode, no frame "
                        "decoding), only the audio is encoded (AAC in mp4/mov, Opus in webm/mkv).",
            inputs=[
                io.Video.Input("video"),
                io.Audio.Input("audio"),
                io.Combo.Input("length_policy", options=list(MUX_POLICIES), default="pad",
                               tooltip="pad: audio padded/trimmed to the video length; trim: longer audio is "
                                       "cut to the video; keep_video: audio written as is, video untouched."),
                io.Combo.Input("existing_audio", options=list(EXISTING_AUDIO), default="replace", optional=True,
                               tooltip="replace the video's own audio, or mix it under the new audio."),
                io.Float.Input("mix_gain_db", default=-12.0, min=-60.0, max=12.0, step=0.5, optional=True,
                               tooltip="Gain of the original audio when mixing."),
            ],
            outputs=[io.Video.Output(display_name="video")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, video, audio, length_policy, existing_audio="replace", mix_gain_db=-12.0) -> io.NodeOutput:
        from ..audiostory_core.mux import mux_audio_onto_video

        wave, sr = audio_from_dict(audio)
        work = Path(folder_paths.get_temp_directory()) / "audiostory"
        work.mkdir(parents=True, exist_ok=True)
        src = video.get_stream_source() if hasattr(video, "get_stream_source") else None
        if not isinstance(src, str):
            tmp_in = work / f"mux_in_{uuid.uuid4().hex}.mp4"
            if src is not None and hasattr(src, "getbuffer"):
                tmp_in.write_bytes(src.getbuffer())
            else:
                video.save_to(str(tmp_in))
            src = str(tmp_in)
        ext = Path(src).suffix.lower()
        if ext not in (".mp4", ".mov", ".mkv", ".webm", ".m4v"):
            ext = ".mkv"
        mm.throw_exception_if_processing_interrupted()
        out = work / f"audiostory_mux_{uuid.uuid4().hex}{ext}"
        mux_audio_onto_video(src, wave, sr, out, policy=length_policy, existing_audio=existing_audio,
                             mix_gain_db=float(mix_gain_db))
        return io.NodeOutput(InputImpl.VideoFromFile(str(out)))


# ---------------------------------------------------------------- save
class AudioStorySaveAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStorySaveAudio",
            display_name="AudioStory Save Audio",
            category=CATEGORY,
            description="Saves WAV (32-bit float) or FLAC (24-bit, with the workflow embedded so the file can be "
                        "dropped back onto ComfyUI) into the output folder.",
            inputs=[
                io.Audio.Input("audio"),
                io.String.Input("filename_prefix", default="audio/AudioStory",
                                tooltip="Sub-folder/name inside the ComfyUI output folder."),
                io.Combo.Input("format", options=list(SAVE_FORMATS), default="flac",
                               tooltip="flac carries the workflow in its tags; WAV cannot."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio, filename_prefix, format) -> io.NodeOutput:
        from comfy.cli_args import args

        if format not in SAVE_FORMATS:
            raise InputError(f"format must be one of {SAVE_FORMATS}")
        if not isinstance(audio, dict) or "waveform" not in audio:
            raise InputError("audio is not an AUDIO value.")
        prefix = safe_prefix(filename_prefix)
        out_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
        meta = {} if args.disable_metadata else workflow_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        results = []
        sr = int(audio["sample_rate"])
        for b, wave in enumerate(audio["waveform"].cpu()):
            mm.throw_exception_if_processing_interrupted()
            name = f"{filename.replace('%batch_num%', str(b))}_{counter:05}_.{format}"
            path = Path(folder) / name
            if format == "flac":
                write_flac_with_metadata(path, wave, sr, meta)
            else:
                write_audio(path, wave, sr, "wav")
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        return io.NodeOutput(ui={"audio": results})


NODES = [
    AudioStoryModelLoader,
    AudioStoryPlanner,
    AudioStoryPlanFromJSON,
    AudioStoryEventTokens,
    AudioStoryConsistencyMemory,
    AudioStorySampler,
    AudioStoryDecode,
    AudioStoryMuxVideo,
    AudioStorySaveAudio,
    AudioStoryNoise,
]
