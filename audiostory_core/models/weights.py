"""Strict, explicit mapping from the official ``pytorch_model.bin`` to plain modules.

The official loader drops every missing or mis-shaped key silently (``strict=False``); here every
expected tensor must be found with the right shape, otherwise :class:`WeightsMismatchError` names
the keys. A tied weight stored once, under its partner's name, is tied. Checkpoint keys that belong
to no AudioStory module are reported (once, as a warning) and ignored, or fatal with ``strict``.

Host memory: the checkpoint is memory-mapped, and each tensor is copied into the target dtype and
its source pages handed back to the kernel (:meth:`MappedCheckpoint.release`) as soon as it has been
consumed, so the peak is about one copy of the weights in the target dtype, not the mapped file plus it.

LoRA is merged at load time (``W + alpha/r * B @ A``) so the LLM is a plain ``transformers``
Qwen2 model. Both peft key layouts are accepted: peft 0.4.0 (``q_proj.weight``, as vendored by the
official repo) and current peft (``q_proj.base_layer.weight``).
"""
from __future__ import annotations

import ctypes
import json
import mmap
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch

from .config import LoraSpec
from ..errors import ModelFilesError, WeightsMismatchError
from ..shapes import shape_problem

LLM_PREFIX = "seedx.llm.base_model.model."
HEAD_PREFIXES = {"seedx.projector.": "projector.", "seedx.audio_projector.": "audio_projector.",
                 "multihead_attention.": "multihead_attention."}
DIT_PREFIXES = {"tangoflux.transformer.": "transformer.", "tangoflux.fc.": "fc.",
                "tangoflux.duration_emebdder.": "duration_embedder."}  # official typo 'emebdder'
T5_PREFIX = "tangoflux.text_encoder."
# Trained modules that text-to-audio never runs. They are accepted (and reported) but not loaded.
UNUSED_PREFIXES = ("seedx.input_resampler.", "seedx.output_resampler.", "seedx.whisper_resampler_llava.")


def load_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` with ``weights_only`` and ``mmap`` so a 12 GB file is paged, not copied."""
    return MappedCheckpoint(path).tensors


class MappedCheckpoint:
    """The tensors of ``pytorch_model.bin``, memory-mapped, plus page release for consumed tensors.

    Pages of a file mapping that were read count in the process RSS until they are unmapped. For a
    12-15 GB checkpoint that doubles the peak, so :meth:`release` advises the kernel to drop the pages
    of a tensor once it has been copied (Linux ``madvise(MADV_DONTNEED)``; the file is untouched and a
    later read simply pages it in again). Only storages that came from the mapping are ever advised.
    """

    def __init__(self, path: Path):
        if not path.is_file():
            raise ModelFilesError(f"Checkpoint {path} is missing. It comes from TencentARC/AudioStory-3B "
                                  f"and goes into {path.parent}/.")
        self.path = path
        self.mapped = True
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                self.mapped = False
                sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except Exception as e:  # corrupt, truncated or not a checkpoint at all
            raise ModelFilesError(f"Cannot read checkpoint {path}: {e}. The file is corrupt or truncated; "
                                  "download it again.") from e
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelFilesError(f"{path} is not a flat state dict of tensors.")
        self.tensors: dict[str, torch.Tensor] = dict(sd)
        self._storages = {t.untyped_storage().data_ptr() for t in self.tensors.values()} if self.mapped else set()

    def release(self, t: torch.Tensor) -> None:
        """Drop the resident pages of a consumed checkpoint tensor (no-op for anything else)."""
        if not self._storages or sys.platform != "linux":
            return
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self._storages:
            return
        page = mmap.PAGESIZE
        start, end = -(-ptr // page) * page, (ptr + st.nbytes()) // page * page  # whole pages inside only
        if end > start:
            _madvise(start, end - start)

    def close(self) -> None:
        """Forget every tensor: the mapping is unmapped once no module holds a view of it."""
        self.tensors.clear()
        self._storages.clear()


_MADV_DONTNEED = 4
_libc = None


def _madvise(addr: int, length: int) -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), _MADV_DONTNEED)
    except (OSError, AttributeError):  # no libc madvise: pages stay resident, nothing else changes
        pass


def trim_heap() -> None:
    """Hand the allocator's free heap pages back to the kernel (glibc ``malloc_trim``; no-op elsewhere).

    Converting tensor by tensor leaves freed fp32 temporaries (LoRA merges, casts) between the kept
    weights; glibc keeps such holes resident, so without a trim they add to the load's peak.
    """
    global _libc
    if sys.platform != "linux":
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to hand back
        pass


def owned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A private copy in ``dtype`` (floating tensors), so the checkpoint's pages can be released."""
    if t.is_floating_point():
        return t.to(dtype=dtype, copy=True)
    return t.clone()


class SafetensorsDir:
    """Lazy access to the (possibly sharded) safetensors of a Hugging Face model folder."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = folder
        self._files: dict[str, Path] = {}
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            for k, f in json.loads(index.read_text())["weight_map"].items():
                self._files[k] = folder / f
        elif (folder / "model.safetensors").is_file():
            with safe_open(str(folder / "model.safetensors"), "pt") as fh:
                for k in fh.keys():
                    self._files[k] = folder / "model.safetensors"
        self._open = safe_open

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def get(self, key: str) -> torch.Tensor:
        with self._open(str(self._files[key]), "pt") as fh:
            return fh.get_tensor(key)


def _is_saved_module(module: str, modules_to_save: Iterable[str]) -> bool:
    # peft matches modules_to_save by suffix: 'norm' also catches every '*layernorm'.
    return any(module.endswith(t) for t in modules_to_save)


def llm_state_dict(ckpt: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], lora: LoraSpec,
                   dtype: torch.dtype, base_dir: Optional[Path] = None, tied: bool = True,
                   source: str = "pytorch_model.bin",
                   release: Callable[[torch.Tensor], None] = lambda t: None,
                   ) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Build a merged Qwen2 state dict from the peft-wrapped checkpoint keys.

    ``expected`` maps plain ``transformers`` keys to shapes. Frozen base weights are taken from the
    checkpoint when present, otherwise from the base model folder ``base_dir``. Returns the state
    dict and the set of checkpoint keys consumed. Each output tensor is a private copy in ``dtype``;
    ``release`` is called on the checkpoint tensors it was made from (to drop their mapped pages).
    """
    base = SafetensorsDir(base_dir) if base_dir is not None else None
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    wrong: list[str] = []
    P = LLM_PREFIX
    consumed: list[torch.Tensor] = []

    def fetch(cands: list[str], hf_key: str, shape: torch.Size, allow_base: bool) -> Optional[torch.Tensor]:
        for c in cands:
            if c in ckpt:
                used.add(c)
                t = ckpt[c]
                consumed.append(t)
                if tuple(t.shape) != tuple(shape):
                    wrong.append(f"{c}: checkpoint {tuple(t.shape)} vs model {tuple(shape)}")
                    return None
                return t
        if allow_base and base is not None and hf_key in base:
            t = base.get(hf_key)
            if tuple(t.shape) != tuple(shape):
                wrong.append(f"{base.folder}/{hf_key}: {tuple(t.shape)} vs model {tuple(shape)}")
                return None
            return t
        missing.append(cands[0])
        return None

    for key, shape in expected.items():
        merged = False
        module, leaf = key.rsplit(".", 1)
        short = module.split(".")[-1]
        if key == "lm_head.weight" and tied:
            # Tied to embed_tokens (tie_weights() restores it): a stored copy is only checked, never copied.
            if P + key in ckpt:
                used.add(P + key)
                if tuple(ckpt[P + key].shape) != tuple(shape):
                    wrong.append(f"{P + key}: checkpoint {tuple(ckpt[P + key].shape)} vs model {tuple(shape)}")
            continue
        if _is_saved_module(module, lora.modules_to_save):
            t = fetch([f"{P}{module}.modules_to_save.default.{leaf}"], key, shape, allow_base=False)
            used.update(k for k in (f"{P}{module}.original_module.{leaf}",) if k in ckpt)
        elif short in lora.target_modules:
            t = fetch([P + key, f"{P}{module}.base_layer.{leaf}"], key, shape, allow_base=True)
            if t is not None and leaf == "weight":
                a_key, b_key = f"{P}{module}.lora_A.default.weight", f"{P}{module}.lora_B.default.weight"
                if a_key not in ckpt or b_key not in ckpt:
                    missing.extend(k for k in (a_key, b_key) if k not in ckpt)
                    t = None
                else:
                    a, b = ckpt[a_key], ckpt[b_key]
                    consumed.extend((a, b))
                    used.update((a_key, b_key))
                    bad = [p for p in (shape_problem(a_key, a, (lora.r, shape[1]), "checkpoint", "model"),
                                       shape_problem(b_key, b, (shape[0], lora.r), "checkpoint", "model")) if p]
                    if bad:
                        wrong.extend(bad)
                        t = None
                    else:
                        t = t.float() + lora.scaling * (b.float() @ a.float())
                        merged = True
        else:
            # embed_tokens / lm_head are resized and trained: they must come from the checkpoint.
            trained = module in ("model.embed_tokens", "lm_head")
            t = fetch([P + key], key, shape, allow_base=not trained)
        if t is not None:
            out[key] = owned(t, dtype)
        for c in consumed:
            release(c)
        consumed.clear()
        if merged:
            trim_heap()  # the merge's fp32 temporaries would otherwise stay resident as heap holes

    # Extra seedx.llm.* keys are left unused: check_leftovers reports them (fatal only when strict).
    if missing or wrong:
        raise WeightsMismatchError(
            f"LLM weights in {source}", missing, [], wrong,
            hint="The LLM part must hold the LoRA (lora_A/lora_B), the modules_to_save norm copies and the "
                 "resized embed_tokens of the AudioStory release; frozen base weights may come from the "
                 "Qwen2.5 folder instead.")
    return out, used


def remap(ckpt: Mapping[str, torch.Tensor], prefixes: Mapping[str, str]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Rename checkpoint keys by prefix (explicitly, so every rename is visible here)."""
    out, used = {}, set()
    for k, t in ckpt.items():
        for src, dst in prefixes.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = t
                used.add(k)
                break
    return out, used


def strict_load(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype,
                hint: str = "", assign: bool = True, key_prefix: str = "", *,
                tied: Optional[Mapping[str, str]] = None, strict: bool = True,
                release: Callable[[torch.Tensor], None] = lambda t: None) -> list[str]:
    """``load_state_dict(strict=True)`` with a readable error naming every bad key.

    Missing and mis-shaped tensors are always fatal. ``tied`` maps a key to its tied partner
    (``encoder.embed_tokens.weight -> shared.weight``): a file that stores the pair once is fine.
    Keys the module does not have are fatal with ``strict``, else returned (for one warning) and ignored.
    """
    state = dict(state)
    for key, partner in (tied or {}).items():
        if key not in state and partner in state:
            state[key] = state[partner]
    expected = module.state_dict()
    missing = sorted(key_prefix + k for k in expected if k not in state)
    unexpected = sorted(key_prefix + k for k in state if k not in expected)
    wrong = sorted(f"{key_prefix}{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape))
    if missing or wrong or (unexpected and strict):
        raise WeightsMismatchError(source, missing, unexpected, wrong, hint)
    cast: dict[str, torch.Tensor] = {}
    copies: dict[int, torch.Tensor] = {}  # one copy per source tensor keeps tied pairs tied
    for k in expected:
        v = state[k]
        if id(v) not in copies:
            if assign:
                copies[id(v)] = owned(v, dtype) if v.is_floating_point() else v.clone()
                release(v)  # tensor by tensor: the mapped pages never pile up
            else:
                copies[id(v)] = v.to(dtype) if v.is_floating_point() else v
        cast[k] = copies[id(v)]
    module.load_state_dict(cast, strict=True, assign=assign)
    for v in state.values():
        release(v)
    return unexpected


def check_leftovers(ckpt: Mapping[str, torch.Tensor], used: set[str], source: str,
                    strict: bool = False) -> tuple[list[str], list[str]]:
    """Checkpoint keys no module used: returns (known unused groups, unknown keys).

    Unknown keys (a training-only tensor, a newer release) are fatal only with ``strict``.
    """
    known = UNUSED_PREFIXES + (T5_PREFIX,)
    unknown = sorted(k for k in ckpt if k not in used and not k.startswith(known))
    if unknown and strict:
        raise WeightsMismatchError(source, [], unknown, [],
                                   hint="These keys belong to no AudioStory module (strict loading). Without "
                                        "--strict they are listed in a warning and ignored.")
    return sorted({p for p in UNUSED_PREFIXES for k in ckpt if k.startswith(p)}), unknown
