"""Sampler and noise nodes: the reference Euler sampler, or any ComfyUI sampler on the same DiT."""
from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..audiostory_core.errors import InputError
from ..audiostory_core.validation import check_texts
from ..audiostory_core.stages.sampling import make_noise, reference_sigmas, sample_latents
from . import comfy_models as cm
from .common import CATEGORY, Events, make_hooks, node_perf, reference_input, reference_numerics
from .layout import conditioning_pair, to_comfy_latent
from .values import EventsBundle
from .event_rows import event_rows, merge_rows, render_rows
from .widgets import CORE_SAMPLERS, REFERENCE_SAMPLER, setting_input


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
                setting_input("noise", tooltip="reference: seed 0 for every clip (official); seeded: seed + event "
                                               "index."),
                setting_input("seed", control_after_generate=True),
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
                setting_input("seed", control_after_generate=True,
                              tooltip="Used by noise=seeded (clip i gets seed+i) and by stochastic samplers."),
                setting_input("steps"),
                setting_input("guidance", "cfg", step=0.1, round=0.01,
                              tooltip="Classifier-free guidance against the null embedding (1 = off)."),
                setting_input("sampler", "sampler_name",
                              options=list(CORE_SAMPLERS) + list(comfy.samplers.KSampler.SAMPLERS),
                              tooltip=f"{REFERENCE_SAMPLER} = the official sampler; audiostory_* = the library's "
                                      "other samplers; the rest are ComfyUI's samplers on the same DiT."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Ignored by reference_euler (σ = linspace(1, 1/steps, steps), then 0)."),
                setting_input("noise", tooltip="reference: the official noise (seed 0 for every clip); seeded: "
                                               "seed + i."),
                io.Sampler.Input("sampler", optional=True, tooltip="Overrides sampler_name."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Overrides steps and scheduler."),
                io.Latent.Input("previous", optional=True,
                                tooltip="Re-roll: a LATENT of these events; only render_events are sampled again, "
                                        "the other events are copied from it unchanged."),
                io.String.Input("render_events", default="", optional=True,
                                tooltip="With 'previous': the events to re-render, 1-based ('2,4', '2-4', 'all'); "
                                        "empty = none. Connect AudioStoryScore's events output to re-roll the "
                                        "weak ones."),
                reference_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Audio latent [events, 64, frames].")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    @reference_numerics
    def execute(cls, model, events, seed, steps, cfg, sampler_name, scheduler, noise, sampler=None,
                sigmas=None, previous=None, render_events="", reference=False) -> io.NodeOutput:
        check_texts(render_events=render_events)
        dit = checked_dit(model, events)
        x = make_noise(noise, events.count, events.audio_seq_len, int(seed))
        rows = render_rows(previous, render_events, events)
        if rows is not None:  # re-roll: sample only these events (their own noise rows), keep the others
            if not rows:
                return io.NodeOutput({"samples": previous["samples"].clone(), "type": "audio"})
            events, x = event_rows(events, rows), x[rows]
        core = CORE_SAMPLERS.get(sampler_name)
        if core is not None and sampler is None and sigmas is None and cm.is_unpatched(model):
            samples = reference_sample(model, dit, events, x, int(steps), float(cfg), cls.hidden.unique_id, core,
                                       reference)
        elif core is not None and sampler_name != REFERENCE_SAMPLER:
            raise InputError(f"{sampler_name} is the library's sampler: it runs on an unpatched model without "
                             "SAMPLER/SIGMAS inputs; pick a ComfyUI sampler for a patched model or custom sigmas.")
        else:
            samples = comfy_sample(model, events, x, int(seed), int(steps), float(cfg), sampler_name, scheduler,
                                   sampler, sigmas)
        if rows is not None:
            samples = merge_rows(previous["samples"], rows, samples)
        return io.NodeOutput({"samples": samples, "type": "audio"})


def checked_dit(model, events):
    """The AudioStory DiT inside ``model``, after checking that ``events`` were made for it."""
    dit = cm.dit_of(model)
    if dit is None:
        raise InputError("model must be the MODEL output of AudioStoryModelLoader.")
    if not isinstance(events, EventsBundle):
        raise InputError("events must come from AudioStoryEventTokens.")
    if int(dit.config.audio_seq_len) != events.audio_seq_len:
        raise InputError(f"The events were made for clips of {events.audio_seq_len} frames but this DiT renders "
                         f"{dit.config.audio_seq_len}: use the planner and model of the same loader.")
    return dit


def reference_sample(model, dit, events: EventsBundle, x, steps: int, cfg: float, node_id, sampler: str = "euler",
                     reference: bool = False):
    """A core sampler (``sample_latents``; euler = the official one) on the DiT, loaded by the memory
    manager with the working memory of one CFG step over all events; on CUDA the compiled step and attention
    backend unless ``reference`` (or ComfyUI's low-VRAM modes for the compile)."""
    perf = node_perf(reference)
    e, t = events.count, events.audio_seq_len
    cm.load([model], model.model.memory_required([2 * e, 64, t]))
    lat = sample_latents(dit, events.fused, events.null_embedding, events.clip_seconds, steps=steps, guidance=cfg,
                         initial_noise=x, sampler=sampler, hooks=make_hooks(node_id), compile=perf.compile_dit,
                         attention_backend=perf.attention_backend)
    return to_comfy_latent(lat.float().to(mm.intermediate_device()))


def comfy_sample(model, events: EventsBundle, x, seed: int, steps: int, cfg: float, sampler_name: str,
                 scheduler: str, sampler=None, sigmas=None):
    """Any ComfyUI sampler/scheduler (or SAMPLER/SIGMAS sockets) on the same DiT through ``sample_custom``;
    ``reference_euler`` here means comfy's euler on the reference sigmas."""
    pos, neg = conditioning_pair(events)
    if sigmas is None:
        if sampler_name == REFERENCE_SAMPLER:
            sigmas = torch.tensor(list(reference_sigmas(steps)) + [0.0], dtype=torch.float32)
        else:
            sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                             scheduler=scheduler, denoise=1.0, model_options=model.model_options).sigmas
    if sampler is None:
        sampler = comfy.samplers.sampler_object("euler" if sampler_name == REFERENCE_SAMPLER else sampler_name)
    latent = torch.zeros(events.count, 64, events.audio_seq_len)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    return comfy.sample.sample_custom(model, to_comfy_latent(x), cfg, sampler, sigmas, pos, neg, latent,
                                      callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


NODES = [AudioStorySampler, AudioStoryNoise]
