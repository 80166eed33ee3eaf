"""The classifier-free-guidance negative: flan-t5 encoding of the empty string, padded to N tokens.

It depends only on N, the T5 weights and the dtype, so it is computed once and cached as
safetensors next to the weights (or in a user cache folder when the model folder is read-only);
later runs never load T5.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from ..atomic import write_bytes_atomic
from ..errors import ModelFilesError
from ..shapes import check_shapes
from .weights import T5_PREFIX

CACHE_ENV = "AUDIOSTORY_CACHE"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def cache_name(n_tokens: int, dtype: torch.dtype) -> str:
    return f"null_embedding_n{n_tokens}_{_dtype_name(dtype)}.safetensors"


def fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def cache_dirs(weights_dir: Path) -> list[Path]:
    """Where the cache is looked for and written, in order.

    ``AUDIOSTORY_CACHE`` (when set) comes first, then the model folder, then ``~/.cache/audiostory``
    (used when the model folder cannot be written, for whatever reason).
    """
    sub = fingerprint([weights_dir])
    env = os.environ.get(CACHE_ENV)
    dirs = [Path(env).expanduser() / sub] if env else []
    return dirs + [weights_dir, Path.home() / ".cache" / "audiostory" / sub]


def compute_null_embedding(t5_dir: Path, n_tokens: int, dtype: torch.dtype,
                           t5_weights: Optional[Mapping[str, torch.Tensor]] = None,
                           device: torch.device | str = "cpu",
                           release: Callable[[torch.Tensor], None] = lambda t: None) -> torch.Tensor:
    """T5(""), ``padding="max_length"`` to N with its attention mask: shape [1, N, d_model].

    The official run loads T5 in fp32 and casts the whole model to the run's dtype; building it on the
    meta device and copying each checkpoint tensor straight into ``dtype`` gives the same weights with
    one copy in memory (``release`` drops each consumed tensor's mapped pages).
    """
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(t5_dir))
        config = T5Config.from_pretrained(str(t5_dir))
    except Exception as e:
        raise ModelFilesError(f"Cannot load the T5 tokenizer/config from {t5_dir}: {e}. "
                              "It is google/flan-t5-large (only used for the CFG negative).") from e
    if t5_weights:
        # The official Flux_T5 loads T5 from text_encoder_name, then pytorch_model.bin overwrites it.
        with torch.device("meta"):
            model = T5EncoderModel(config)
        state = {k[len(T5_PREFIX):]: v for k, v in t5_weights.items() if k.startswith(T5_PREFIX)}
        from .weights import strict_load
        # T5 ties encoder.embed_tokens to shared; writers (safetensors, TangoFlux) store the pair once, and
        # transformers 5 lists only one of them in state_dict(): the other is then an ignorable extra.
        strict_load(model, state, f"T5 encoder weights ({T5_PREFIX}*)", dtype, strict=False, release=release,
                    tied={"encoder.embed_tokens.weight": "shared.weight", "shared.weight": "encoder.embed_tokens.weight"})
        # transformers 5 ties encoder.embed_tokens to shared by parameter, not by module: assigning the
        # loaded tensor to one leaves the other on meta, so tie them again (a no-op on 4.x).
        model.set_input_embeddings(model.get_input_embeddings())
        left = [n for n, t in [*model.named_parameters(remove_duplicate=False),
                               *model.named_buffers(remove_duplicate=False)] if t.is_meta]
        if left:
            raise ModelFilesError(f"T5 encoder weights ({T5_PREFIX}*) did not fill: {', '.join(left[:10])}.")
    else:
        try:
            from .dtypes import dtype_kwarg
            model = T5EncoderModel.from_pretrained(str(t5_dir), **dtype_kwarg(torch.float32))
        except Exception as e:
            raise ModelFilesError(f"Cannot load the T5 encoder weights from {t5_dir}: {e}") from e
    model = model.to(device=device, dtype=dtype).eval()  # same device/dtype as the official fp16 GPU run
    batch = tokenizer([""], max_length=n_tokens, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))[0]
    del model
    return out.detach().cpu().clone()


def t5_width(t5_dir: Path) -> Optional[int]:
    """T5's d_model from its config.json (None when unreadable: the width is then not checked)."""
    try:
        return int(json.loads((Path(t5_dir) / "config.json").read_text())["d_model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_or_compute(weights_dir: Path, t5_dir: Path, n_tokens: int, dtype: torch.dtype,
                    t5_weights: Optional[Mapping[str, torch.Tensor]] = None,
                    sources: Optional[list[Path]] = None,
                    device: torch.device | str = "cpu",
                    release: Callable[[torch.Tensor], None] = lambda t: None) -> tuple[torch.Tensor, Path | None]:
    """Return the cached null embedding, computing and caching it on first use."""
    from safetensors.torch import load_file, save

    fp = fingerprint(sources or [t5_dir])
    name = cache_name(n_tokens, dtype)
    for d in cache_dirs(weights_dir):
        f = d / name
        if f.is_file():
            try:
                data = load_file(str(f))
                from safetensors import safe_open
                with safe_open(str(f), "pt") as fh:
                    meta = fh.metadata() or {}
                if meta.get("fingerprint") != fp or "null_embedding" not in data:
                    continue
            except Exception:
                continue  # unreadable cache: recompute
            check_shapes(f"The cached null embedding {f}", data, {"null_embedding": (1, n_tokens, t5_width(t5_dir))},
                         hint=f"Delete it (rm '{f}'); the next load computes it again from T5.")
            return data["null_embedding"], f
    emb = compute_null_embedding(t5_dir, n_tokens, dtype, t5_weights, device, release)
    for d in cache_dirs(weights_dir):
        try:
            return emb, write_bytes_atomic(d / name, save({"null_embedding": emb.contiguous()},
                                                         metadata={"fingerprint": fp}))
        except Exception:  # read-only folder, full disk, SafetensorError...: try the next place
            continue
    return emb, None
