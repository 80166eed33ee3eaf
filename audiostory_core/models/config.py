"""Model-root discovery and the hyper-parameters read from the official config files.

The official release is laid out as ``ckpt/AudioStory-3B/{config.yaml,pytorch_model.bin}``,
``ckpt/Flux_detokenizer/{config.json,model.safetensors}``, ``ckpt/Qwen2.5-3B-Instruct/`` and
``ckpt/flan-t5-large/``. Users rename the folders (``audiostory-3B``, ``audiostory_3b``,
``audiostory``), so the AudioStory folder is found by its contents, and every path written inside
a config is resolved against the chosen model root, never against the current directory.
``config.yaml`` is read as data: its Hydra ``_target_`` strings are never imported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import ModelFilesError

AUDIOSTORY_NAMES = ("AudioStory-3B", "audiostory-3B", "audiostory_3b", "audiostory-3b", "audiostory")
FLUX_NAMES = ("Flux_detokenizer",)
QWEN_DEFAULT = "Qwen2.5-3B-Instruct"
T5_DEFAULT = "flan-t5-large"

LAYOUT_HELP = """Expected layout of a model root (e.g. ComfyUI/models/audiostory/<name>/):
  <root>/AudioStory-3B/config.yaml           (from TencentARC/AudioStory-3B)
  <root>/AudioStory-3B/pytorch_model.bin     (from TencentARC/AudioStory-3B)
  <root>/Flux_detokenizer/config.json        (DiT hyper-parameters)
  <root>/Flux_detokenizer/model.safetensors  (Oobleck VAE weights)
  <root>/Qwen2.5-3B-Instruct/                (Qwen/Qwen2.5-3B-Instruct: tokenizer, config, generation_config.json)
  <root>/flan-t5-large/                      (google/flan-t5-large, only for the CFG negative)
Run `python -m audiostory_core download --models <root>` to fetch them."""


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
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ModelFilesError(f"Cannot read {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ModelFilesError(f"{path} is not a YAML mapping")

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
        lora = LoraSpec(r=int(peft["r"]), alpha=float(peft.get("lora_alpha", peft["r"])),
                        target_modules=tuple(peft.get("target_modules") or ()),
                        modules_to_save=tuple(peft.get("modules_to_save") or ()))
        tok = get("tokenizer", default={}) or {}
        return cls(
            n_semantic=int(get("train_dataset", "datapipes", 0, "num_t5_out_tokens")),
            n_residual=int(get("train_dataset", "datapipes", 0, "num_aud_out_tokens")),
            t5_feature_scale=float(get("agent_model", "t5_feature_scale", default=10.0)),
            model_dims=int(get("agent_model", "model_dims", default=5120)),
            vocab_size=int(get("llm_model", "vocab_size")),
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
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFilesError(f"Cannot read {path}: {e}") from e
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


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
    def vae_weights(self) -> Path: return self.flux_dir / "model.safetensors"
    @property
    def vae_config(self) -> Path: return self.flux_dir / "vae_config.json"


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
            fd = cands[0] if cands else None
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
        p = resolve_in_root(root, written) or resolve_in_root(root, fallback_name)
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
    added = None
    if cfg.added_tokens_path:
        added = resolve_in_root(root, cfg.added_tokens_path)
    if added is None and (tok / "added_tokens.json").is_file():
        added = tok / "added_tokens.json"
    return ModelPaths(root=root, audiostory_dir=as_dir, flux_dir=flux_dir, qwen_dir=qwen, t5_dir=t5,
                      tokenizer_dir=tok, added_tokens_json=added)
