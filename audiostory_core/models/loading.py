"""Build every AudioStory component from a model root, strictly, in the requested dtype.

One place owns the checkpoint: the bin is memory-mapped once, each component takes its keys (each
tensor copied into the target dtype, its mapped pages released at once), and the mapping is dropped
at the end. Missing and mis-shaped tensors are fatal; keys that belong to no module are collected in
:attr:`AudioStoryModels.warnings` (fatal with ``strict=True``). Components can be loaded separately
so a host (ComfyUI) can place and unload them independently.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .dtypes import dtype_kwarg
from .config import AudioStoryConfig, FluxConfig, ModelPaths
from ..errors import ModelFilesError
from .modules import AudioStoryDiT, BridgeHeads
from .null_embedding import load_or_compute
from .tokenizer import build_tokenizer
from .weights import (DIT_PREFIXES, HEAD_PREFIXES, T5_PREFIX, MappedCheckpoint, check_leftovers,
                      llm_state_dict, remap, strict_load, trim_heap)

# What Qwen/Qwen2.5-3B-Instruct ships in generation_config.json (the official run decodes with it).
# The eos ids are those of <|im_end|> and <|endoftext|> (151645, 151643 in the Qwen2.5 tokenizer).
QWEN_GENERATION_DEFAULTS = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                            "eos_token_id": [151645, 151643], "repetition_penalty": 1.05,
                            "temperature": 0.7, "top_p": 0.8, "top_k": 20}
QWEN_EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class GenerationSettings:
    """Decoding settings from the base model's ``generation_config.json``."""

    eos_token_ids: tuple[int, ...]
    repetition_penalty: float = 1.0
    max_new_tokens: int = 1600

    @classmethod
    def from_dir(cls, qwen_dir: Path, warnings: Optional[list[str]] = None,
                 token_id: Optional[Callable[[str], Optional[int]]] = None) -> "GenerationSettings":
        """Read ``generation_config.json``; without it, the official Qwen2.5-3B-Instruct values (with a warning).

        A missing file must not silently mean "no EOS, no penalty": the story would run on for minutes.
        ``token_id`` maps the Qwen eos tokens to this tokenizer's ids for the fallback.
        """
        f = qwen_dir / "generation_config.json"
        if not f.is_file():
            eos = list(QWEN_GENERATION_DEFAULTS["eos_token_id"])
            if token_id is not None:
                found = [token_id(t) for t in QWEN_EOS_TOKENS]
                if all(isinstance(i, int) and i >= 0 for i in found):
                    eos = found
            msg = (f"{f} is missing: decoding uses the values Qwen2.5-3B-Instruct ships (eos ids {eos}, "
                   f"repetition_penalty {QWEN_GENERATION_DEFAULTS['repetition_penalty']}). Copy the file from "
                   "Qwen/Qwen2.5-3B-Instruct to silence this.")
            if warnings is not None:
                warnings.append(msg)
            return cls(eos_token_ids=tuple(eos),
                       repetition_penalty=float(QWEN_GENERATION_DEFAULTS["repetition_penalty"]))
        try:
            cfg = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFilesError(f"Cannot read {f}: {e}. Replace it with the file from "
                                  "Qwen/Qwen2.5-3B-Instruct.") from e
        if not isinstance(cfg, dict):
            raise ModelFilesError(f"{f} must be a JSON object (the Qwen2.5 generation config).")
        eos = cfg.get("eos_token_id", [])
        eos = list(eos) if isinstance(eos, list) else ([eos] if eos is not None else [])
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in eos):
            raise ModelFilesError(f"{f}: eos_token_id must be a token id or a list of ids, got {cfg['eos_token_id']!r}.")
        pen = cfg.get("repetition_penalty", 1.0)
        if isinstance(pen, bool) or not isinstance(pen, (int, float)) or not math.isfinite(pen) or pen <= 0:
            raise ModelFilesError(f"{f}: repetition_penalty must be a positive number (1.05 in Qwen2.5), got {pen!r}.")
        return cls(eos_token_ids=tuple(eos), repetition_penalty=float(pen))


@contextmanager
def _on_meta():
    with torch.device("meta"):
        yield


class Checkpoint(MappedCheckpoint):
    """The memory-mapped ``pytorch_model.bin`` plus bookkeeping of which keys were used."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.used: set[str] = set()

    def validate(self, strict: bool = False) -> tuple[list[str], list[str]]:
        return check_leftovers(self.tensors, self.used, str(self.path), strict)


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
    with _on_meta():
        model = AutoModelForCausalLM.from_config(qcfg, **dtype_kwarg(dtype))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = bool(getattr(qcfg, "tie_word_embeddings", False))
    state, used = llm_state_dict(ckpt.tensors, expected, cfg.lora, dtype, base_dir=paths.qwen_dir,
                                 tied=tied, source=str(ckpt.path), release=ckpt.release)
    ckpt.used |= used
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.tie_weights()
    # Non-persistent buffers (RoPE inverse frequencies) were created on meta: rebuild them.
    model.model.rotary_emb = _rotary(type(model.model.rotary_emb), model.config, device)
    return model.to(device).eval()


def _rotary(cls: type, config, device) -> torch.nn.Module:
    """Build the rotary embedding on ``device``; transformers 5 dropped its ``device`` argument."""
    if "device" in inspect.signature(cls.__init__).parameters:
        return cls(config=config, device=device)
    with torch.device(device):
        return cls(config=config)


def _prefixed(keys: list[str], prefixes: dict[str, str]) -> list[str]:
    """Module keys back to checkpoint names (for the unknown-key warning)."""
    out = []
    for k in keys:
        src = next((s for s, d in prefixes.items() if k.startswith(d)), "")
        dst = prefixes.get(src, "")
        out.append(src + k[len(dst):] if src else k)
    return out


def load_heads(cfg: AudioStoryConfig, ckpt: Checkpoint, dtype: torch.dtype, device="cpu",
               strict: bool = True) -> BridgeHeads:
    with _on_meta():
        heads = BridgeHeads(cfg.model_dims, cfg.t5_feature_scale)
    state, used = remap(ckpt.tensors, HEAD_PREFIXES)
    extra = strict_load(heads, state, f"bridge heads in {ckpt.path} (seedx.projector, seedx.audio_projector, "
                        "multihead_attention)", dtype, strict=strict, release=ckpt.release)
    ckpt.used |= used - set(_prefixed(extra, HEAD_PREFIXES))
    return heads.to(device).eval()


def load_dit(fcfg: FluxConfig, ckpt: Checkpoint, dtype: torch.dtype, device="cpu", strict: bool = True) -> AudioStoryDiT:
    with _on_meta():
        dit = AudioStoryDiT(fcfg)
    state, used = remap(ckpt.tensors, DIT_PREFIXES)
    extra = strict_load(dit, state, f"DiT weights in {ckpt.path} (tangoflux.transformer/fc/duration_emebdder)",
                        dtype, strict=strict, release=ckpt.release,
                        hint="The DiT shape comes from Flux_detokenizer/config.json; check it belongs to this "
                             "checkpoint.")
    ckpt.used |= used - set(_prefixed(extra, DIT_PREFIXES))
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


def vae_rate_channels(paths: ModelPaths) -> tuple[int, int]:
    """(sample rate, channels) the VAE will load with, without loading it: its config over the class defaults."""
    import inspect

    from diffusers import AutoencoderOobleck

    cfg = {k: p.default for k, p in inspect.signature(AutoencoderOobleck.__init__).parameters.items()}
    cfg.update(vae_config(paths))
    return int(cfg["sampling_rate"]), int(cfg["audio_channels"])


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
    with _on_meta():  # no random init: the file's tensors become the parameters
        vae = AutoencoderOobleck(**vae_config(paths))
    strict_load(vae, state, f"VAE weights {f}", dtype,
                hint="Flux_detokenizer/model.safetensors must hold AutoencoderOobleck weights (diffusers names); "
                     "a non-default VAE needs Flux_detokenizer/vae_config.json.")
    del state
    return vae.to(device=device).eval()


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
    # Non-fatal problems found while loading (unknown checkpoint keys, a missing generation_config.json);
    # the CLI prints them, the loader node shows them.
    warnings: list[str] = field(default_factory=list)


def _token_id(tok, token: str) -> Optional[int]:
    """The id of ``token`` if the tokenizer really has it (not an unknown-token fallback)."""
    i = tok.convert_tokens_to_ids(token)
    return i if isinstance(i, int) and tok.convert_ids_to_tokens(i) == token else None


def unknown_keys_warning(keys: list[str], source: Path) -> str:
    shown = ", ".join(keys[:20]) + (f", ... and {len(keys) - 20} more" if len(keys) > 20 else "")
    return (f"{len(keys)} key(s) in {source} belong to no AudioStory module and were ignored: {shown}. "
            "Load with strict=True (--strict) to make this an error.")


def load_stages(planner: bool = True, dit: bool = True, vae: bool = True) -> list[str]:
    """The stages :func:`load_models` reports to ``on_stage``, in order (a host sizes its progress bar)."""
    return ((["null_embedding"] if dit else []) + (["vae"] if vae else []) + (["llm", "heads"] if planner else [])
            + (["dit"] if dit else []) + ["validate"])


def load_models(paths: ModelPaths, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                planner: bool = True, dit: bool = True, vae: bool = True, strict: bool = False,
                on_stage: Optional[Callable[[str], None]] = None) -> AudioStoryModels:
    """Load the requested components; the null embedding comes from the cache when possible.

    Missing and mis-shaped tensors always raise :class:`WeightsMismatchError`. Checkpoint keys that
    belong to no module are listed once in ``warnings`` and ignored, or raise with ``strict``.
    ``on_stage(name)`` is called after each stage (:func:`load_stages`): the loader node advances its
    progress bar and checks for Cancel there, the load-memory benchmark reads each stage's peak.

    Order keeps the host peak near one copy of the weights: T5 (a first load only) and the VAE, whose
    transient copies are the largest, go first while little is resident; the heap is trimmed after
    every stage so freed temporaries do not stay resident under the weights that follow.
    """
    cfg = AudioStoryConfig.from_yaml(paths.config_yaml)
    fcfg = FluxConfig.from_json(paths.flux_config)
    out = AudioStoryModels(paths=paths, config=cfg, flux_config=fcfg)

    def done(stage: str) -> None:
        trim_heap()
        if on_stage is not None:
            on_stage(stage)

    ckpt = Checkpoint(paths.checkpoint)
    try:
        if dit:
            t5_state = {k: v for k, v in ckpt.tensors.items() if k.startswith(T5_PREFIX)}
            out.null_embedding, _ = load_or_compute(paths.flux_dir, paths.t5_dir, cfg.n_semantic, dtype,
                                                    t5_weights=t5_state or None,
                                                    sources=[paths.checkpoint, paths.t5_dir], device=device,
                                                    release=ckpt.release)
            del t5_state
            done("null_embedding")
        if vae:
            out.vae = load_vae(paths, dtype, device)
            done("vae")
        if planner:
            tok, ids = build_tokenizer(paths.tokenizer_dir, paths.added_tokens_json, cfg.vocab_size,
                                       cfg.n_semantic, cfg.n_residual)
            gen = GenerationSettings.from_dir(paths.qwen_dir, out.warnings, token_id=lambda t: _token_id(tok, t))
            ids = dataclasses.replace(ids, eos=gen.eos_token_ids)
            llm = load_llm(paths, cfg, ckpt, dtype, device)
            done("llm")
            heads = load_heads(cfg, ckpt, dtype, device, strict=False)  # judged below, once
            out.planner = Planner(llm=llm, tokenizer=tok, ids=ids, heads=heads, generation=gen, config=cfg)
            done("heads")
        if dit:
            out.dit = load_dit(fcfg, ckpt, dtype, device, strict=False)
            done("dit")
        # A partial load cannot judge the other parts' keys; foreign keys are still flagged.
        skipped = (() if planner else ("seedx.llm.",) + tuple(HEAD_PREFIXES)) + (() if dit else tuple(DIT_PREFIXES))
        if skipped:
            ckpt.used |= {k for k in ckpt.tensors if k.startswith(skipped)}
        out.unused_components, unknown = ckpt.validate(strict)
        if unknown:
            out.warnings.insert(0, unknown_keys_warning(unknown, paths.checkpoint))
    finally:
        ckpt.close()  # drop the mapping: nothing loaded keeps a view of it
    done("validate")
    return out
