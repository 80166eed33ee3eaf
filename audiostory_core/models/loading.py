"""Build every AudioStory component from a model root, strictly, in the requested dtype.

One place owns the checkpoint: the bin is memory-mapped once, each component takes its keys,
and leftovers that belong to no module are an error. Components can be loaded separately so a
host (ComfyUI) can place and unload them independently.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .dtypes import dtype_kwarg
from .config import AudioStoryConfig, FluxConfig, ModelPaths
from ..errors import ModelFilesError, WeightsMismatchError
from .modules import AudioStoryDiT, BridgeHeads
from .null_embedding import load_or_compute
from .tokenizer import build_tokenizer
from .weights import (DIT_PREFIXES, HEAD_PREFIXES, T5_PREFIX, check_leftovers, llm_state_dict,
                      load_torch_checkpoint, remap, strict_load)


@dataclass
class GenerationSettings:
    """Decoding settings from the base model's ``generation_config.json``."""

    eos_token_ids: tuple[int, ...]
    repetition_penalty: float = 1.0
    max_new_tokens: int = 1600

    @classmethod
    def from_dir(cls, qwen_dir: Path) -> "GenerationSettings":
        f = qwen_dir / "generation_config.json"
        cfg = json.loads(f.read_text()) if f.is_file() else {}
        eos = cfg.get("eos_token_id", [])
        eos = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(eos_token_ids=eos, repetition_penalty=float(cfg.get("repetition_penalty", 1.0)))


@contextmanager
def _on_meta():
    with torch.device("meta"):
        yield


class Checkpoint:
    """The memory-mapped ``pytorch_model.bin`` plus bookkeeping of which keys were used."""

    def __init__(self, path: Path):
        self.path = path
        self.tensors = load_torch_checkpoint(path)
        self.used: set[str] = set()

    def validate(self) -> list[str]:
        return check_leftovers(self.tensors, self.used, str(self.path))


@dataclass
class Planner:
    """LLM + tokenizer + bridge heads: everything before the DiT."""

    llm: torch.nn.Module
    tokenizer: object
    ids: object
    heads: BridgeHeads
    generation: GenerationSettings
    config: AudioStoryConfig

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.heads.parameters()).dtype

    def to(self, device) -> "Planner":
        self.llm.to(device)
        self.heads.to(device)
        return self


def load_llm(paths: ModelPaths, cfg: AudioStoryConfig, ckpt: Checkpoint, dtype: torch.dtype,
             device: torch.device | str = "cpu") -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        qcfg = AutoConfig.from_pretrained(str(paths.qwen_dir))
    except Exception as e:
        raise ModelFilesError(f"Cannot read the base LLM config in {paths.qwen_dir}: {e}") from e
    if qcfg.hidden_size != cfg.model_dims:
        raise ModelFilesError(f"{paths.qwen_dir} has hidden size {qcfg.hidden_size} but config.yaml says "
                              f"model_dims={cfg.model_dims}: wrong base model folder.")
    qcfg.vocab_size = cfg.vocab_size
    qcfg.torch_dtype = dtype
    with _on_meta():
        model = AutoModelForCausalLM.from_config(qcfg, **dtype_kwarg(dtype))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = bool(getattr(qcfg, "tie_word_embeddings", False))
    state, used = llm_state_dict(ckpt.tensors, expected, cfg.lora, dtype, base_dir=paths.qwen_dir,
                                 tied=tied, source=str(ckpt.path))
    ckpt.used |= used
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.tie_weights()
    # Non-persistent buffers (RoPE inverse frequencies) were created on meta: rebuild them.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=qcfg, device=device)
    return model.to(device).eval()


def load_heads(cfg: AudioStoryConfig, ckpt: Checkpoint, dtype: torch.dtype, device="cpu") -> BridgeHeads:
    with _on_meta():
        heads = BridgeHeads(cfg.model_dims, cfg.t5_feature_scale)
    state, used = remap(ckpt.tensors, HEAD_PREFIXES)
    ckpt.used |= used
    strict_load(heads, state, f"bridge heads in {ckpt.path} (seedx.projector, seedx.audio_projector, "
                "multihead_attention)", dtype)
    return heads.to(device).eval()


def load_dit(fcfg: FluxConfig, ckpt: Checkpoint, dtype: torch.dtype, device="cpu") -> AudioStoryDiT:
    with _on_meta():
        dit = AudioStoryDiT(fcfg)
    state, used = remap(ckpt.tensors, DIT_PREFIXES)
    ckpt.used |= used
    strict_load(dit, state, f"DiT weights in {ckpt.path} (tangoflux.transformer/fc/duration_emebdder)", dtype,
                hint="The DiT shape comes from Flux_detokenizer/config.json; check it belongs to this checkpoint.")
    return dit.to(device).eval()


def vae_config(paths: ModelPaths) -> dict:
    """Default ``AutoencoderOobleck`` config, overridden by ``vae_config.json`` when present."""
    if paths.vae_config.is_file():
        try:
            raw = json.loads(paths.vae_config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFilesError(f"Cannot read {paths.vae_config}: {e}") from e
        return {k: v for k, v in raw.items() if not k.startswith("_")}
    return {}


def load_vae(paths: ModelPaths, dtype: torch.dtype, device="cpu"):
    from diffusers import AutoencoderOobleck
    from safetensors.torch import load_file

    f = paths.vae_weights
    if not f.is_file():
        raise ModelFilesError(f"VAE weights {f} are missing. They are the Oobleck VAE of TangoFlux "
                              f"(declare-lab/TangoFlux vae.safetensors), saved as {f}.")
    try:
        state = load_file(str(f))
    except Exception as e:
        raise ModelFilesError(f"Cannot read VAE weights {f}: {e}. The file is corrupt; download it again.") from e
    vae = AutoencoderOobleck(**vae_config(paths))
    strict_load(vae, state, f"VAE weights {f}", torch.float32, assign=False,
                hint="Flux_detokenizer/model.safetensors must hold AutoencoderOobleck weights (diffusers names); "
                     "a non-default VAE needs Flux_detokenizer/vae_config.json.")
    return vae.to(device=device, dtype=dtype).eval()


@dataclass
class AudioStoryModels:
    paths: ModelPaths
    config: AudioStoryConfig
    flux_config: FluxConfig
    planner: Optional[Planner] = None
    dit: Optional[AudioStoryDiT] = None
    vae: Optional[torch.nn.Module] = None
    null_embedding: Optional[torch.Tensor] = None
    unused_components: list[str] = field(default_factory=list)


def load_models(paths: ModelPaths, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                planner: bool = True, dit: bool = True, vae: bool = True) -> AudioStoryModels:
    """Load the requested components strictly; the null embedding comes from the cache when possible."""
    cfg = AudioStoryConfig.from_yaml(paths.config_yaml)
    fcfg = FluxConfig.from_json(paths.flux_config)
    ckpt = Checkpoint(paths.checkpoint)
    out = AudioStoryModels(paths=paths, config=cfg, flux_config=fcfg)
    gen = GenerationSettings.from_dir(paths.qwen_dir)
    if planner:
        tok, ids = build_tokenizer(paths.tokenizer_dir, paths.added_tokens_json, cfg.vocab_size,
                                   cfg.n_semantic, cfg.n_residual, gen.eos_token_ids)
        llm = load_llm(paths, cfg, ckpt, dtype, device)
        heads = load_heads(cfg, ckpt, dtype, device)
        out.planner = Planner(llm=llm, tokenizer=tok, ids=ids, heads=heads, generation=gen, config=cfg)
    if dit:
        out.dit = load_dit(fcfg, ckpt, dtype, device)
        t5_state = {k: v for k, v in ckpt.tensors.items() if k.startswith(T5_PREFIX)}
        out.null_embedding, _ = load_or_compute(paths.flux_dir, paths.t5_dir, cfg.n_semantic, dtype,
                                                t5_weights=t5_state or None,
                                                sources=[paths.checkpoint, paths.t5_dir], device=device)
    if vae:
        out.vae = load_vae(paths, dtype, device)
    if planner and dit:
        out.unused_components = ckpt.validate()
    else:  # partial loads cannot judge leftovers of the other parts; still reject foreign keys
        ckpt.used |= {k for k in ckpt.tensors if k.startswith(("seedx.llm.",) + tuple(HEAD_PREFIXES)
                                                             + tuple(DIT_PREFIXES))}
        out.unused_components = ckpt.validate()
    return out
