"""The loader's dtype choice and the working-memory estimates handed to ComfyUI's memory manager
(kept apart from ``comfy_models.py`` so they are unit-tested without ComfyUI).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..audiostory_core.errors import InputError


DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


FP8_DTYPE_NAMES = ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz")


def dtype_from_choice(choice: str) -> Optional[torch.dtype]:
    """None for 'auto' (the host decides per component)."""
    table = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if choice not in table:
        raise InputError(f"dtype must be one of {DTYPE_CHOICES}, got {choice!r}")
    return table[choice]


def pick_dtype(forced: Optional[torch.dtype], host_choice: Optional[torch.dtype], bf16_ok: bool, fp16_ok: bool,
               what: str, flag: str) -> torch.dtype:
    """The weight dtype of one AudioStory model (DiT or LLM).

    ``forced``: the loader's dtype widget (None = auto). ``host_choice``: what a ComfyUI launch flag
    asks for (``--bf16-unet``, ``--fp8_e4m3fn-unet``..., None without a flag). Auto prefers bf16 where the
    device computes it well (as ComfyUI runs Flux-family models), then fp16 (the official choice, also
    selectable on the loader), else fp32. The modules are plain diffusers/transformers layers, not
    ``comfy.ops``, so they cannot store fp8 weights and cast them per layer: an fp8 flag is refused with
    what to do instead, unless the loader's dtype is set explicitly.
    """
    if forced is not None:
        return forced
    if host_choice is not None:
        if str(host_choice).replace("torch.", "") in FP8_DTYPE_NAMES:
            raise InputError(
                f"ComfyUI was started with {flag}, but the AudioStory {what} is built from plain PyTorch layers "
                f"(not comfy.ops) and cannot run with {str(host_choice).replace('torch.', '')} weights. Set the "
                "loader's dtype to bf16 or fp16 (it then overrides the flag for AudioStory only), or start "
                "ComfyUI without the fp8 flag.")
        return host_choice
    if bf16_ok:
        return torch.bfloat16
    if fp16_ok:
        return torch.float16
    return torch.float32


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def transformer_working_memory(*, hidden: int, layers: int, kv_width: int, intermediate: int, tokens: int,
                               dtype: torch.dtype, vocab: int = 0, batch: int = 1, kv_cache: bool = True) -> int:
    """Bytes a transformer needs beside its weights for one forward over ``tokens`` (an estimate).

    KV cache for the whole context (decoders), one layer's activations for the prefill (the residual
    stream, q/k/v/out and the MLP's gate/up/down are alive at once; attention runs through SDPA, so no
    tokens x tokens matrix is kept) and fp32 logits of the last position.
    """
    b = dtype_bytes(dtype)
    kv = 2 * layers * kv_width * tokens * b * batch if kv_cache else 0
    act = batch * tokens * (6 * hidden + 3 * intermediate) * b
    logits = batch * vocab * 4 * 2
    return int(kv + act + logits)


def hf_working_memory(config: Any, tokens: int, dtype: torch.dtype, kv_cache: bool = True) -> int:
    """:func:`transformer_working_memory` from a transformers config (decoder LLM, a VLM's text model or a
    Whisper encoder)."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(c, "hidden_size", None) or getattr(c, "d_model"))
    layers = int(getattr(c, "num_hidden_layers", None) or getattr(c, "encoder_layers"))
    heads = int(getattr(c, "num_attention_heads", None) or getattr(c, "encoder_attention_heads"))
    kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
    inter = int(getattr(c, "intermediate_size", None) or getattr(c, "encoder_ffn_dim", None) or 4 * hidden)
    vocab = int(getattr(c, "vocab_size", 0) or 0) if kv_cache else 0
    return transformer_working_memory(hidden=hidden, layers=layers, kv_width=kv_heads * head_dim,
                                      intermediate=inter, tokens=int(tokens), dtype=dtype, vocab=vocab,
                                      kv_cache=kv_cache)


def dit_working_memory(*, batch: int, frames: int, context: int, width: int, dtype: torch.dtype) -> int:
    """Bytes the AudioStory DiT needs beside its weights for one step over ``batch`` clips (an estimate).

    Joint attention over ``frames + context`` tokens (64 query tokens + the duration token): the residual
    streams of both branches, q/k/v/out, the 4x MLP (the single blocks concatenate attention and MLP,
    ~7x width) and the modulation vectors; SDPA keeps no full attention matrix.
    """
    b = dtype_bytes(dtype)
    tokens = frames + context
    return int(batch * tokens * width * b * 14 + batch * frames * 64 * 4 * 4)
