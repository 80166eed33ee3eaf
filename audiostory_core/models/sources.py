"""Where each component of a model root comes from: its Hugging Face repo, layout folder and files, and
its snapshot in the local cache. Shared by ``config.py`` (a config path that names a layout folder also
resolves from the cache) and ``download.py`` (which fetches them), so neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Source:
    key: str
    repo: str
    folder: str
    patterns: Optional[tuple[str, ...]]
    note: str
    renames: tuple[tuple[str, str], ...] = ()
    optional: bool = False      # fetched only when named in ``only`` (not needed to generate)
    shared: bool = False        # not part of a model root: linked under ``shared_root`` (models/audiostory/)


SOURCES = (
    Source("audiostory", "TencentARC/AudioStory-3B", "AudioStory-3B", ("*.yaml", "*.bin", "*.json", "*.md"),
           "config.yaml + pytorch_model.bin"),
    Source("qwen", "Qwen/Qwen2.5-3B-Instruct", "Qwen2.5-3B-Instruct",
           ("*.json", "*.safetensors", "merges.txt", "vocab.json", "*.md", "LICENSE"),
           "base LLM, tokenizer, generation_config.json"),
    Source("t5", "google/flan-t5-large", "flan-t5-large", ("*.json", "*.safetensors", "spiece.model"),
           "T5 encoder for the CFG negative"),
    Source("vae", "declare-lab/TangoFlux", "Flux_detokenizer", ("config.json", "vae.safetensors", "vae_config.json"),
           "config.json + Oobleck VAE (vae.safetensors -> model.safetensors)",
           renames=(("vae.safetensors", "model.safetensors"),)),
    Source("clap", "laion/clap-htsat-unfused", "clap-htsat-unfused",
           ("*.json", "merges.txt", "pytorch_model.bin"), "CLAP for `score` (optional: --only clap)",
           optional=True, shared=True),
    Source("vlm", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-3B-Instruct",
           ("*.json", "*.jinja", "*.safetensors", "merges.txt", "vocab.json", "LICENSE", "*.md"),
           "vision-language captioner for video dubbing (optional: --only vlm)", optional=True, shared=True),
    Source("whisper", "openai/whisper-large-v3", "whisper-large-v3",
           ("*.json", "model.safetensors", "merges.txt", "vocab.json", "*.md"),
           "Whisper encoder for audio continuation (optional: --only whisper)", optional=True, shared=True),
)
KEYS = tuple(s.key for s in SOURCES)
# The model root's folder name where the pack fetches into ComfyUI (models/audiostory/<ROOT_NAME>/).
ROOT_NAME = "AudioStory"
# Layout folder name -> hub repo, so a config's ``ckpt/Qwen2.5-3B-Instruct`` also resolves from the cache.
FOLDER_REPOS = {s.folder: s.repo for s in SOURCES}


def cached_snapshot(repo: str, revision: Optional[str] = None) -> Optional[Path]:
    """The snapshot folder of ``repo`` in the local Hugging Face cache, or None. Never uses the network."""
    try:
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(repo_id=repo, revision=revision, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the caller reports what is missing
        return None
    return p if p.is_dir() else None
