"""The AudioStory modules as ComfyUI models: the DiT as a flow ``BaseModel`` under ``ModelPatcher``
(so KSampler / SamplerCustomAdvanced run it), the Oobleck VAE as a ``comfy.sd.VAE`` (so
VAEDecodeAudio / VAEEncodeAudio work) and the LLM planner under ``ModelPatcher`` (so the memory
manager can evict it and "Unload models" frees it). Devices and dtypes come from
``comfy.model_management`` only.
"""
from __future__ import annotations

import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base

from .logic import bits_to_seconds

log = logging.getLogger("AudioStory")


# ---------------------------------------------------------------- DiT as a comfy MODEL
class AudioStoryLatentFormat(comfy.latent_formats.LatentFormat):
    """Oobleck latents: 64 channels, 1-D (like Stable Audio), no scaling."""

    latent_channels = 64
    latent_dimensions = 1


class AudioStoryModelConfig(comfy.supported_models_base.BASE):
    # The module is built by the AudioStory loader, not by comfy from a unet_config.
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    # Flow matching, sigma = t in [0, 1], no shift; comfy passes timestep = 1000 * sigma.
    sampling_settings = {"shift": 1.0, "multiplier": 1000}
    latent_format = AudioStoryLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]


class DiTAdapter(torch.nn.Module):
    """comfy's ``diffusion_model`` call convention -> ``AudioStoryDiT``.

    comfy: ``x`` [B, 64, T], ``timestep`` = 1000·σ, ``context`` = tokens [B, N, 1024], per-event
    clip seconds in ``audiostory_seconds``. Output: velocity ε − x0 in [B, 64, T] (CONST prediction).
    """

    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    def forward(self, x, timestep, context=None, control=None, transformer_options={}, audiostory_seconds=None,
                **kwargs):
        if context is None:
            raise ValueError("AudioStory MODEL needs conditioning tokens: use AudioStoryEventTokens' "
                             "positive/negative outputs.")
        if audiostory_seconds is None:
            raise ValueError("This conditioning has no per-event durations. Use the positive/negative "
                             "CONDITIONING outputs of AudioStoryEventTokens (ConditioningZeroOut etc. keep them).")
        seconds = bits_to_seconds(audiostory_seconds).to(torch.float32)
        if seconds.shape[0] != x.shape[0]:
            seconds = seconds.repeat((x.shape[0] + seconds.shape[0] - 1) // seconds.shape[0])[: x.shape[0]]
        ctx, pooled = self.dit.condition(context, seconds)
        sigma = timestep.float() / 1000.0
        v = self.dit(x.transpose(1, 2), sigma, ctx, pooled)
        return v.transpose(1, 2)


class AudioStoryDiTModel(comfy.model_base.BaseModel):
    """``BaseModel`` with ``ModelType.FLOW`` (CONST + ModelSamplingDiscreteFlow) around the DiT."""

    def __init__(self, model_config, dit, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = DiTAdapter(dit)
        self.audio_seq_len = int(dit.config.audio_seq_len)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        secs = kwargs.get("audiostory_seconds", None)
        if secs is not None:
            out["audiostory_seconds"] = comfy.conds.CONDRegular(secs)
        return out


def dit_model_patcher(dit, dtype: torch.dtype):
    cfg = AudioStoryModelConfig({"disable_unet_model_creation": True})
    cfg.set_inference_dtype(dtype, None)
    model = AudioStoryDiTModel(cfg, dit, device=mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def dit_of(model_patcher):
    """The ``AudioStoryDiT`` inside a MODEL, or None when the MODEL is not an AudioStory one."""
    base = getattr(model_patcher, "model", None)
    adapter = getattr(base, "diffusion_model", None)
    return getattr(adapter, "dit", None) if isinstance(adapter, DiTAdapter) else None


def is_unpatched(model_patcher) -> bool:
    return not model_patcher.patches and not model_patcher.object_patches and not \
        model_patcher.model_options.get("model_function_wrapper") and not \
        model_patcher.model_options.get("sampler_cfg_function")


# ---------------------------------------------------------------- Oobleck VAE as a comfy VAE
class OobleckAdapter(torch.nn.Module):
    """comfy VAE ``first_stage_model`` interface over diffusers ``AutoencoderOobleck``."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def decode(self, z, **kwargs):
        return self.vae.decode(z).sample

    def encode(self, x):
        # deterministic: the posterior mean (comfy's Oobleck bottleneck samples; the mean is its mode)
        return self.vae.encode(x).latent_dist.mean


class AudioStoryVAE(comfy.sd.VAE):
    """A ``comfy.sd.VAE`` set up like core's Stable Audio (Oobleck) branch, wrapping the diffusers VAE."""

    def __init__(self, diffusers_vae, dtype: torch.dtype):
        # comfy.sd.VAE.__init__ detects architectures from a state dict; the AudioStory VAE config can
        # differ from Stable Audio's fixed one, so the attributes are set here as in its Oobleck branch.
        self.memory_used_encode = lambda shape, dt: (1000 * shape[2]) * mm.dtype_size(dt)
        self.memory_used_decode = lambda shape, dt: (1000 * shape[2] * 2048) * mm.dtype_size(dt)
        self.latent_channels = int(diffusers_vae.config.decoder_input_channels)
        self.output_channels = int(diffusers_vae.config.audio_channels)
        self.pad_channel_value = "replicate"
        ratio = 1
        for r in diffusers_vae.config.downsampling_ratios:
            ratio *= int(r)
        self.upscale_ratio = ratio
        self.downscale_ratio = ratio
        self.latent_dim = 1
        self.process_output = lambda audio: audio
        self.process_input = lambda audio: audio
        self.working_dtypes = [torch.float16, torch.bfloat16, torch.float32]
        self.disable_offload = True
        self.not_video = False
        self.size = None
        self.downscale_index_formula = None
        self.upscale_index_formula = None
        self.extra_1d_channel = None
        self.crop_input = True
        self.sample_rate = int(diffusers_vae.config.sampling_rate)

        self.first_stage_model = OobleckAdapter(diffusers_vae).eval()
        self.device = mm.vae_device()
        offload_device = mm.vae_offload_device()
        self.vae_dtype = dtype
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=offload_device)
        log.info("AudioStory VAE load device: %s, offload device: %s, dtype: %s", self.device, offload_device,
                 self.vae_dtype)
        self.model_size()

    @property
    def diffusers_vae(self):
        return self.first_stage_model.vae


# ---------------------------------------------------------------- LLM planner under ModelPatcher
class AudioStoryLLM(torch.nn.Module):
    """Container so the LLM is one ModelPatcher-managed module."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm


class AudioStoryBridgeHeads(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads


def planner_patchers(planner):
    dev, off = mm.text_encoder_device(), mm.text_encoder_offload_device()
    llm = comfy.model_patcher.ModelPatcher(AudioStoryLLM(planner.llm), load_device=dev, offload_device=off)
    heads = comfy.model_patcher.ModelPatcher(AudioStoryBridgeHeads(planner.heads), load_device=dev,
                                             offload_device=off)
    return llm, heads


def unload_patcher(patcher) -> bool:
    """Move one model back to its offload device now (what the memory manager does under pressure)."""
    for i, lm in enumerate(list(mm.current_loaded_models)):
        if lm.model is patcher:
            if lm.model_unload():
                mm.current_loaded_models.pop(i)
                mm.soft_empty_cache()
                return True
    return False
