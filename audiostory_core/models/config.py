"""Model-root discovery and the hyper-parameters read from the official config files.

The official release is laid out as ``ckpt/AudioStory-3B/{config.yaml,pytorch_model.bin}``,
``ckpt/Flux_detokenizer/{config.json,model.safetensors}``, ``ckpt/Qwen2.5-3B-Instruct/`` and
``ckpt/flan-t5-large/``. Users rename the folders (``audiostory-3B``, ``audiostory_3b``,
``audiostory``), so the AudioStory folder is found by its contents, and every path written inside
a config is resolved against the chosen model root, never against the current directory.
``config.yaml`` is read as data: its Hydra ``_target_`` strings are never imported, and its
OmegaConf ``${...}`` interpolations are resolved by OmegaConf (node references and ``oc.env``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import ModelFilesError
from .sources import FOLDER_REPOS, cached_snapshot

AUDIOSTORY_NAMES = ("AudioStory-3B", "audiostory-3B", "audiostory_3b", "audiostory-3b", "audiostory")
QWEN_DEFAULT = "Qwen2.5-3B-Instruct"
T5_DEFAULT = "flan-t5-large"

LAYOUT_HELP = """Expected layout of a model root (e.g. ComfyUI/models/audiostory/<name>/):
  <root>/AudioStory-3B/config.yaml           (from TencentARC/AudioStory-3B)
  <root>/AudioStory-3B/pytorch_model.bin     (from TencentARC/AudioStory-3B)
  <root>/Flux_detokenizer/config.json        (DiT hyper-parameters)
  <root>/Flux_detokenizer/model.safetensors  (Oobleck VAE weights)
  <root>/Qwen2.5-3B-Instruct/                (Qwen/Qwen2.5-3B-Instruct: tokenizer, config, generation_config.json)
  <root>/flan-t5-large/                      (google/flan-t5-large, only for the CFG negative)
Run `python -m audiostory_core download --models <root>` to fetch them (it fills the Hugging Face cache and
links the layout; offline, `hf download <repo>` on another machine + HF_HUB_OFFLINE=1 here)."""


# The grammar has <t5_00000>..<t5_00099> and <aud_00000>..<aud_00500> (official token budget).
MAX_SEMANTIC = 100
MAX_RESIDUAL = 501
# 645 frames are the official 30 s; 4096 (~190 s per clip) is far beyond any release and still renders.
MAX_AUDIO_SEQ_LEN = 4096

# Clip geometry: the Oobleck VAE turns one latent frame into HOP samples at its own rate.
HOP = 2048
VAE_SAMPLE_RATE = 44100          # the release's VAE rate (vae_config.json "sampling_rate")


def clip_seconds(durations: list[float], crossfade: float) -> list[float]:
    """Non-last events are rendered ``crossfade`` seconds longer so clips overlap (official rule)."""
    return [d + crossfade if i < len(durations) - 1 else d for i, d in enumerate(durations)]


def max_clip_seconds(audio_seq_len: int, vae_sample_rate: int = VAE_SAMPLE_RATE) -> float:
    """Longest clip the DiT renders: ``audio_seq_len`` latent frames of :data:`HOP` samples."""
    return audio_seq_len * HOP / vae_sample_rate


def resolve_interpolations(raw: Any, path: Path) -> Any:
    """Resolve the OmegaConf ``${a.b.0.c}``, ``${.sibling}`` and ``${oc.env:VAR[,default]}`` of a loaded YAML tree
    with OmegaConf itself (data only: nothing is instantiated).

    Hydra configs may write ``pretrained_model_name_or_path: ${paths.qwen}``; read as plain YAML that
    string would be taken as a folder name. Anything else (custom resolvers, cycles) is a clear error.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException, UnsupportedInterpolationType

    try:
        return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        try:
            written = _written_at(raw, key)
        except (KeyError, IndexError, TypeError, ValueError):
            written = key
        reason = str(e).splitlines()[0]
        env = re.search(r"Environment variable '([^']+)' not found", reason)
        if env:
            raise ModelFilesError(f"{path}: '{written}' needs the environment variable {env.group(1)}.") from None
        if isinstance(e, UnsupportedInterpolationType):
            raise ModelFilesError(f"{path}: interpolation '{written}' uses a resolver that is not supported; "
                                  "write the value itself into config.yaml.") from None
        if isinstance(e, InterpolationKeyError):
            raise ModelFilesError(f"{path}: interpolation '{written}' points at nothing ({reason}; at {key}).") from None
        if "Recursive interpolation" in reason:
            raise ModelFilesError(f"{path}: interpolations refer to each other in a cycle (at {key}).") from None
        raise ModelFilesError(f"{path}: cannot resolve the interpolation '{written}' at {key}: {reason}") from None


def _written_at(raw: Any, key: str) -> Any:
    """The value written at an OmegaConf ``full_key`` (``a.b[0].c``) of the raw YAML tree."""
    cur = raw
    for part in re.findall(r"[^.\[\]]+", key):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def _positive_int(value: Any, what: str, path: Path, upper: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper and value > upper):
        bound = f" (at most {upper})" if upper else ""
        raise ModelFilesError(f"{path}: {what} must be a positive integer{bound}, got {value!r}.")
    return value


def is_audiostory_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and (p / "pytorch_model.bin").is_file()


def is_flux_dir(p: Path) -> bool:
    if not (p / "config.json").is_file():
        return False
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "audio_seq_len" in cfg


def _children(p: Path) -> list[Path]:
    try:
        return sorted(c for c in p.iterdir() if c.is_dir())
    except OSError:
        return []


def find_audiostory_dir(root: Path) -> Path:
    """The folder holding ``config.yaml`` + ``pytorch_model.bin``: root itself, or one level or two below."""
    if is_audiostory_dir(root):
        return root
    found = [c for c in _children(root) if is_audiostory_dir(c)]
    if not found:
        found = [g for c in _children(root) for g in _children(c) if is_audiostory_dir(g)]
    if not found:
        raise ModelFilesError(
            f"No AudioStory checkpoint (a folder with config.yaml + pytorch_model.bin) under {root}.\n"
            + LAYOUT_HELP)
    if len(found) > 1:
        preferred = [f for n in AUDIOSTORY_NAMES for f in found if f.name == n]
        if preferred:
            return preferred[0]
        raise ModelFilesError(
            f"Several AudioStory checkpoints under {root}: {', '.join(str(f) for f in found)}. "
            "Pass the one to use explicitly (--audiostory-dir).")
    return found[0]


def resolve_in_root(root: Path, written: str) -> Optional[Path]:
    """Resolve a path written in a config (``ckpt/Qwen2.5-3B-Instruct``, ``google/flan-t5-large``,
    ``tokenizer``) against the model root. Returns None when nothing matches."""
    p = Path(written)
    cands: list[Path] = []
    if p.is_absolute():
        cands.append(p)
    else:
        cands.append(root / p)
        parts = p.parts
        if parts and parts[0] == "ckpt":
            cands.append(root.joinpath(*parts[1:]) if len(parts) > 1 else root)
        cands.append(root / "ckpt" / p)
        cands.append(root / p.name)
    for c in cands:
        if c.exists():
            return c
    return None


def _read_mapping(path: Path, parse, parse_error: type, not_mapping: str) -> dict:
    """A config file parsed into a dict, or a ModelFilesError naming the file (unreadable, invalid, not a
    mapping)."""
    try:
        raw = parse(path.read_text())
    except (OSError, parse_error) as e:
        raise ModelFilesError(f"Cannot read {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ModelFilesError(f"{path} {not_mapping}")
    return raw


@dataclass
class LoraSpec:
    r: int
    alpha: float
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...]

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class AudioStoryConfig:
    """Values from ``config.yaml`` that define shapes and inference behaviour."""

    n_semantic: int
    n_residual: int
    t5_feature_scale: float
    model_dims: int
    vocab_size: int
    lora: LoraSpec
    qwen_path: str
    tokenizer_path: Optional[str]
    added_tokens_path: Optional[str]
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_yaml(cls, path: Path) -> "AudioStoryConfig":
        raw = _read_mapping(path, yaml.safe_load, yaml.YAMLError, "is not a YAML mapping")
        raw = resolve_interpolations(raw, path)

        def get(*keys: Any, default: Any = KeyError) -> Any:
            cur: Any = raw
            for k in keys:
                try:
                    cur = cur[k]
                except (KeyError, IndexError, TypeError):
                    if default is KeyError:
                        raise ModelFilesError(
                            f"{path} lacks '{'.'.join(str(x) for x in keys)}'. Is this an AudioStory config.yaml?")
                    return default
            return cur

        peft = get("llm_model", "peft_config")
        if not isinstance(peft, dict) or "r" not in peft:
            raise ModelFilesError(f"{path}: llm_model.peft_config must be a mapping with the LoRA rank 'r'.")
        lora = LoraSpec(r=_positive_int(peft["r"], "llm_model.peft_config.r", path),
                        alpha=float(peft.get("lora_alpha", peft["r"])),
                        target_modules=tuple(peft.get("target_modules") or ()),
                        modules_to_save=tuple(peft.get("modules_to_save") or ()))
        tok = get("tokenizer", default={}) or {}
        dims = get("agent_model", "model_dims", default=None)
        if dims is None:
            raise ModelFilesError(f"{path} lacks 'agent_model.model_dims' (the LLM hidden size, 2048 for "
                                  "Qwen2.5-3B). Add it; it must equal hidden_size in the base model's config.json.")
        n_sem = _positive_int(get("train_dataset", "datapipes", 0, "num_t5_out_tokens"),
                              "train_dataset.datapipes[0].num_t5_out_tokens (N)", path, MAX_SEMANTIC)
        n_res = _positive_int(get("train_dataset", "datapipes", 0, "num_aud_out_tokens"),
                              "train_dataset.datapipes[0].num_aud_out_tokens (M)", path, MAX_RESIDUAL)
        return cls(
            n_semantic=n_sem,
            n_residual=n_res,
            t5_feature_scale=float(get("agent_model", "t5_feature_scale", default=10.0)),
            model_dims=_positive_int(dims, "agent_model.model_dims", path),
            vocab_size=_positive_int(get("llm_model", "vocab_size"), "llm_model.vocab_size", path),
            lora=lora,
            qwen_path=str(get("llm_model", "model", "pretrained_model_name_or_path")),
            tokenizer_path=tok.get("pretrained_model_path"),
            added_tokens_path=tok.get("add_tokens_path"),
            raw=raw,
        )


@dataclass
class FluxConfig:
    """``Flux_detokenizer/config.json`` with the official defaults (modeling_flux.py)."""

    num_layers: int = 6
    num_single_layers: int = 18
    in_channels: int = 64
    attention_head_dim: int = 128
    joint_attention_dim: int = 1024
    num_attention_heads: int = 8
    audio_seq_len: int = 645
    max_duration: float = 30.0
    text_encoder_name: str = "ckpt/flan-t5-large"

    @classmethod
    def from_json(cls, path: Path) -> "FluxConfig":
        raw = _read_mapping(path, json.loads, json.JSONDecodeError,
                            "must be a JSON object (the Flux_detokenizer config).")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        cfg = cls(**known)
        for name in ("num_layers", "num_single_layers", "in_channels", "attention_head_dim",
                     "joint_attention_dim", "num_attention_heads"):
            _positive_int(getattr(cfg, name), name, path)
        _positive_int(cfg.audio_seq_len, "audio_seq_len (latent frames per clip, 645 in the release)", path,
                      MAX_AUDIO_SEQ_LEN)
        md = cfg.max_duration
        if isinstance(md, bool) or not isinstance(md, (int, float)) or not math.isfinite(md) or md <= 0:
            raise ModelFilesError(f"{path}: max_duration must be a positive number of seconds (30 in the "
                                  f"release), got {md!r}.")
        cfg.max_duration = float(md)
        if not isinstance(cfg.text_encoder_name, str) or not cfg.text_encoder_name:
            raise ModelFilesError(f"{path}: text_encoder_name must name the flan-t5 folder.")
        return cfg


@dataclass
class ModelPaths:
    """Every file the pipeline reads. Build it with :func:`locate`, override any field."""

    root: Path
    audiostory_dir: Path
    flux_dir: Path
    qwen_dir: Path
    t5_dir: Path
    tokenizer_dir: Path
    added_tokens_json: Optional[Path]

    @property
    def config_yaml(self) -> Path: return self.audiostory_dir / "config.yaml"
    @property
    def checkpoint(self) -> Path: return self.audiostory_dir / "pytorch_model.bin"
    @property
    def flux_config(self) -> Path: return self.flux_dir / "config.json"
    @property
    def vae_weights(self) -> Path:
        # TangoFlux's own repo (e.g. a Hugging Face cache snapshot) names the file vae.safetensors.
        own = self.flux_dir / "vae.safetensors"
        return own if own.is_file() and not (self.flux_dir / "model.safetensors").exists() \
            else self.flux_dir / "model.safetensors"
    @property
    def vae_config(self) -> Path: return self.flux_dir / "vae_config.json"


def hub_id_for(written: str) -> Optional[str]:
    """The hub repo a config path means: ``google/flan-t5-large`` itself, or a layout folder's repo."""
    p = Path(written)
    if not p.is_absolute() and len(p.parts) == 2 and p.parts[0] not in ("ckpt", ".", ".."):
        return written
    return FOLDER_REPOS.get(p.name)


def resolve_from_cache(*written: str) -> Optional[Path]:
    """A hub id (or the repo of a layout folder name) resolved from the local Hugging Face cache."""
    for w in written:
        repo = hub_id_for(w) if w else None
        snap = cached_snapshot(repo) if repo else None
        if snap is not None:
            return snap
    return None


def locate(root: str | Path, *, audiostory_dir: str | Path | None = None, flux_dir: str | Path | None = None,
           qwen_dir: str | Path | None = None, t5_dir: str | Path | None = None,
           tokenizer_dir: str | Path | None = None) -> ModelPaths:
    """Find every component of a model root; explicit arguments override discovery."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ModelFilesError(f"Model folder {root} does not exist.\n{LAYOUT_HELP}")
    as_dir = Path(audiostory_dir) if audiostory_dir else find_audiostory_dir(root)
    if not is_audiostory_dir(as_dir):
        raise ModelFilesError(f"{as_dir} must contain config.yaml and pytorch_model.bin.\n{LAYOUT_HELP}")
    # The official paths are relative to the AudioStory repo root (``ckpt/...``) and the fixture's
    # to the parent of the checkpoint folder; the model root covers both.
    if root == as_dir:
        root = as_dir.parent
    cfg = AudioStoryConfig.from_yaml(as_dir / "config.yaml")

    if flux_dir is None:
        fd = resolve_in_root(root, "ckpt/Flux_detokenizer")
        if fd is None or not is_flux_dir(fd):
            cands = [c for c in _children(root) if is_flux_dir(c)]
            fd = cands[0] if cands else resolve_from_cache("ckpt/Flux_detokenizer")
        if fd is None:
            raise ModelFilesError(
                f"No Flux_detokenizer folder (config.json with audio_seq_len + model.safetensors) under {root}.\n"
                + LAYOUT_HELP)
        flux_dir = fd
    flux_dir = Path(flux_dir)
    fcfg = FluxConfig.from_json(flux_dir / "config.json")

    def _need(override, written: str, what: str, fallback_name: str) -> Path:
        if override:
            return Path(override)
        p = (resolve_in_root(root, written) or resolve_in_root(root, fallback_name)
             or resolve_from_cache(written, fallback_name))
        if p is None:
            raise ModelFilesError(
                f"{what} folder '{written}' (written in the config) was not found under {root}. "
                f"Put it at {root / Path(written).name}.\n{LAYOUT_HELP}")
        return p

    qwen = _need(qwen_dir, cfg.qwen_path, "Base LLM", QWEN_DEFAULT)
    t5 = _need(t5_dir, fcfg.text_encoder_name, "T5 text encoder", T5_DEFAULT)
    if tokenizer_dir:
        tok = Path(tokenizer_dir)
    else:
        tok = (resolve_in_root(root, cfg.tokenizer_path) if cfg.tokenizer_path else None) or qwen
    # Only the file the config names is the official token order; a tokenizer folder's own
    # added_tokens.json (written by save_pretrained) is not checked, its ids are.
    added = resolve_in_root(root, cfg.added_tokens_path) if cfg.added_tokens_path else None
    return ModelPaths(root=root, audiostory_dir=as_dir, flux_dir=flux_dir, qwen_dir=qwen, t5_dir=t5,
                      tokenizer_dir=tok, added_tokens_json=added)


def max_clip_seconds_for(paths: ModelPaths) -> float:
    """:func:`max_clip_seconds` of a model root without loading it (two small configs)."""
    sr = VAE_SAMPLE_RATE
    if paths.vae_config.is_file():
        try:
            sr = int(json.loads(paths.vae_config.read_text()).get("sampling_rate", sr))
        except (OSError, ValueError):
            pass
    return max_clip_seconds(FluxConfig.from_json(paths.flux_config).audio_seq_len, sr)
