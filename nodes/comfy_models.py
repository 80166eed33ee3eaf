"""The AudioStory modules as ComfyUI models: the DiT as a flow ``BaseModel`` under ``ModelPatcher``
(so KSampler / SamplerCustomAdvanced run it), the Oobleck VAE as a ``comfy.sd.VAE`` (so
VAEDecodeAudio / VAEEncodeAudio work), the LLM planner, the dubbing VLM and the continuation Whisper
under ``ModelPatcher`` (so the memory manager loads them with an estimate, evicts them under pressure
and "Unload models" frees them). Devices and dtypes come from ``comfy.model_management`` only.

Every AudioStory patcher is a :class:`FullLoadPatcher`: the modules are plain diffusers/transformers
layers, not ``comfy.ops``, and ComfyUI's partial (lowvram) loading only streams ``comfy.ops`` layers;
any other layer left on the CPU would break the forward pass. So they load whole or not at all.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base

from ..audiostory_core.errors import InputError

from .dtypes_memory import dit_working_memory, hf_working_memory
from .layout import bits_to_seconds

log = logging.getLogger("AudioStory")


# ---------------------------------------------------------------- loading whole
class FullLoadPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher that never loads or unloads part of its model.

    ``partially_load`` always asks for the whole model (``full_load``), and ``partially_unload`` frees
    nothing, so ``LoadedModel.model_unload`` detaches the whole model instead. Clones (``ModelSamplingSD3``
    and the like) keep the class, so core samplers load the DiT whole too.
    """

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        return super().partially_load(device_to, max(extra_memory, self.model_size() + 1),
                                      force_patch_weights=force_patch_weights)

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0


def load(patchers: list, working_memory: int = 0) -> None:
    """Load models through ComfyUI's memory manager: their weights plus ``working_memory`` bytes are made
    free (other models are evicted as needed), then each loads whole."""
    mm.load_models_gpu(list(patchers), memory_required=int(working_memory), force_full_load=True)


def unload_patcher(patcher) -> bool:
    """Move one model back to its offload device now, through the public ``free_memory``: every other
    loaded model is kept, so only this one is unloaded (what the memory manager does under pressure)."""
    loaded = mm.loaded_models()
    if not any(p is patcher for p in loaded):
        return False
    keep = [mm.LoadedModel(p) for p in loaded if p is not patcher]
    return bool(mm.free_memory(1e30, patcher.load_device, keep_loaded=keep))


def is_loaded(patcher) -> bool:
    return any(p is patcher for p in mm.loaded_models())


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

    def memory_required(self, input_shape, cond_shapes={}):
        """Working memory of one DiT call on ``input_shape`` [B, 64, T] (the batch includes CFG's
        negative half when ComfyUI asks for it), instead of the image-model formula of ``BaseModel``."""
        cfg = self.diffusion_model.dit.config
        width = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
        return dit_working_memory(batch=int(input_shape[0]), frames=int(input_shape[-1]), context=128,
                                  width=width, dtype=self.get_dtype())

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
    return FullLoadPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


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
        # Why not comfy.sd.VAE(sd=..., metadata=...): ComfyUI 0.8.0 builds its audio VAE only from a state dict
        # in its own key layout ("decoder.layers.1.layers.0.beta") and then always with Stable Audio's fixed
        # hyper-parameters (AudioOobleckVAE(): 128 channels, c_mults 1-16, strides 2-8, 64 latents); its
        # ``config=`` argument builds an AutoencoderKL only. The AudioStory VAE is diffusers' AutoencoderOobleck
        # with the hyper-parameters of its vae_config.json (the test fixtures use a smaller one), so no public
        # constructor builds it; the attributes below are exactly those core's Oobleck branch sets, with the
        # ratios, channels and rate read from the config, and the rest of comfy.sd.VAE is used unchanged.
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
        self.patcher = FullLoadPatcher(self.first_stage_model, load_device=self.device, offload_device=offload_device)
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
    llm = FullLoadPatcher(AudioStoryLLM(planner.llm), load_device=dev, offload_device=off)
    heads = FullLoadPatcher(AudioStoryBridgeHeads(planner.heads), load_device=dev, offload_device=off)
    return llm, heads


def llm_working_memory(llm, tokens: int) -> int:
    """KV cache and activations of the planner LLM over ``tokens`` (prompt + generated)."""
    return hf_working_memory(llm.config, tokens, next(llm.parameters()).dtype)


# ---------------------------------------------------------------- VLM and Whisper, cached between runs
class AudioStoryAuxModel(torch.nn.Module):
    """Container so a helper model (dubbing VLM, continuation Whisper) is one ModelPatcher-managed module."""

    def __init__(self, model):
        super().__init__()
        self.model = model


_AUX: dict[str, tuple[Hashable, Any, Any]] = {}


def cached_aux_model(kind: str, key: Hashable, build: Callable[[torch.device], Any],
                     module_of: Callable[[Any], torch.nn.Module]) -> tuple[Any, Any]:
    """``(object, patcher)`` for a helper model, built once per ``key`` and kept between runs.

    ``build(device)`` loads it on the offload device; the patcher moves it to the load device when a
    node calls :func:`load`, and the memory manager (or "Unload models") moves it back. One model per
    ``kind`` is kept: asking for another key drops the previous one.
    """
    hit = _AUX.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    _AUX.pop(kind, None)
    off = mm.text_encoder_offload_device()
    log.info("AudioStory: loading the %s %s from disk", kind, key[0] if isinstance(key, tuple) else key)
    obj = build(off)
    patcher = FullLoadPatcher(AudioStoryAuxModel(module_of(obj)), load_device=mm.text_encoder_device(),
                              offload_device=off)
    _AUX[kind] = (key, obj, patcher)
    return obj, patcher


def aux_working_memory(module: torch.nn.Module, tokens: int, kv_cache: bool = True) -> int:
    return hf_working_memory(module.config, tokens, next(module.parameters()).dtype, kv_cache=kv_cache)


class CoreWhisperEncoder:
    """Core's Whisper audio encoder (``AudioEncoderLoader`` -> AUDIO_ENCODER) in the shape the continuation
    path uses: ``width`` and ``__call__(mono16k [S]) -> [1, 1500, width]`` final (layer-normed) encoder states.

    Core's whisper3 model is Whisper-large-v3's encoder: the same 30 s window (padded), 128 log-mel bins
    and 1500 output frames as the ``transformers`` encoder AudioStory's ``whisper_resampler_llava`` was
    trained on (its log-mel is computed with torchaudio, so features match to float rounding, not bits).
    wav2vec2 encoders produce other features and are refused.
    """

    def __init__(self, audio_encoder):
        model = getattr(audio_encoder, "model", None)
        enc = getattr(model, "encoder", None)
        if enc is None or not hasattr(model, "feature_extractor") or not hasattr(enc, "layer_norm"):
            raise InputError(
                f"The audio encoder is a {type(model).__name__}, not Whisper: AudioStory's audio understanding "
                "was trained on Whisper-large-v3 encoder states. Load whisper_large_v3 with AudioEncoderLoader, "
                "or leave audio_encoder unconnected to use the Whisper folder named in 'whisper'.")
        self.audio_encoder = audio_encoder
        self.width = int(enc.layer_norm.normalized_shape[0])

    def __call__(self, mono16k: torch.Tensor) -> torch.Tensor:
        out = self.audio_encoder.encode_audio(mono16k.reshape(1, 1, -1).float(), 16000)
        return out["encoded_audio"].float()
