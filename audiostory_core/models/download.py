"""Fetch the public weights into the official layout with ``huggingface_hub``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ModelFilesError

# (key, repo id, target folder, allow patterns, note)
SOURCES = [
    ("audiostory", "TencentARC/AudioStory-3B", "AudioStory-3B", ["*.yaml", "*.bin", "*.json", "*.md"],
     "config.yaml + pytorch_model.bin"),
    ("qwen", "Qwen/Qwen2.5-3B-Instruct", "Qwen2.5-3B-Instruct", None, "base LLM, tokenizer, generation_config.json"),
    ("t5", "google/flan-t5-large", "flan-t5-large",
     ["*.json", "*.model", "*.safetensors", "spiece.model"], "T5 encoder for the CFG negative"),
    ("vae", "declare-lab/TangoFlux", "Flux_detokenizer", ["config.json", "vae.safetensors"],
     "config.json + Oobleck VAE (vae.safetensors -> model.safetensors)"),
]


def layout_help(root: Path) -> str:
    lines = [f"Put the files here by hand (from a machine with network access):"]
    for _, repo, folder, _, note in SOURCES:
        lines.append(f"  https://huggingface.co/{repo} -> {root / folder}/   ({note})")
    return "\n".join(lines)


def download_all(root: Path, only: Optional[Sequence[str]] = None) -> None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover
        raise ModelFilesError("huggingface_hub is not installed: pip install huggingface_hub") from e
    root.mkdir(parents=True, exist_ok=True)
    for key, repo, folder, patterns, _ in SOURCES:
        if only and key not in only:
            continue
        target = root / folder
        print(f"downloading {repo} -> {target}", file=sys.stderr)
        try:
            snapshot_download(repo_id=repo, local_dir=str(target), allow_patterns=patterns)
        except Exception as e:
            raise ModelFilesError(f"Could not download {repo}: {type(e).__name__}: {e}\n{layout_help(root)}") from e
        if key == "vae":
            vae = target / "vae.safetensors"
            if vae.is_file():
                vae.replace(target / "model.safetensors")
            # TangoFlux names the text encoder by hub id; point it at the local folder.
            import json
            cfg_path = target / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["text_encoder_name"] = "flan-t5-large"
            cfg_path.write_text(json.dumps(cfg, indent=2))
