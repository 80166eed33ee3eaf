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
from ..audiostory_core.stages.sampling import make_noise, reference_sigmas, sample_latents
from . import comfy_models as cm
from .common import CATEGORY, Events, make_hooks, reference_numerics
from .logic import NOISE_CHOICES, REFERENCE_SAMPLER, EventsBundle, conditioning_pair, to_comfy_latent


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


NODES = [AudioStorySampler, AudioStoryNoise]
