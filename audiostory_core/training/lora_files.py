"""LoRA files: one safetensors file with the low-rank pairs and the training config in its metadata.

Applying a file adds ``strength · (alpha / rank) · B @ A`` to the matching weights of the model in memory
(the checkpoint on disk is never written); strength 0 leaves every weight bit for bit as loaded. This module
does not need ``peft``: a LoRA trained here can be used by anyone who has the pack.

Two kinds of file (metadata ``target``):

* ``dit`` (``train --mode dit``): ``{module}.lora_A.weight`` / ``.lora_B.weight`` pairs, keys relative to the DiT.
* ``e2e`` (``train --mode e2e``): the same DiT pairs, plus ``llm.{module}.lora_A/B.weight`` pairs on the planner's
  LLM (merged as the release's planner LoRA is: ``W + llm_alpha/llm_rank · B @ A``, keys relative to the
  ``transformers`` Qwen2 model, ``llm_rank``/``llm_alpha``/``llm_targets`` in the metadata) and
  ``heads.{param}`` deltas of the bridge heads (trained weight minus released weight; applied as
  ``strength · delta``). :func:`apply_lora` applies the DiT part, :func:`apply_planner_lora` the planner part.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from ..atomic import write_bytes_atomic
from ..errors import InputError

LORA_FORMAT = "audiostory-lora/1"
LORA_TARGETS = ("dit", "e2e")
LLM_KEY, HEADS_KEY = "llm.", "heads."
LORA_FOLDER = ("loras", "audiostory")     # models/loras/audiostory/ (registered with folder_paths by the pack)
MAX_STRENGTH = 10.0
MAX_LORAS = 8
# Every linear layer of the DiT blocks (attention, feed-forward, single-block MLP) and the output projection.
DIT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the strength to apply it at (CLI ``FILE[:strength]``)."""

    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``FILE`` or ``FILE:strength``; the strength is a finite number in [-10, 10]."""
        path, strength = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                strength = float(tail)
                path = head
            except ValueError:
                pass  # a ':' inside the path (Windows drive), not a strength
        return cls(Path(path), check_strength(strength))


def check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or abs(strength) > MAX_STRENGTH:
        raise InputError(f"LoRA strength must be a number between {-MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
                         f"got {strength!r} (1 = as trained, 0 = off).")
    return float(strength)


def save_lora(path: Union[str, Path], tensors: Mapping[str, torch.Tensor], *, rank: int, alpha: float,
              targets: Sequence[str], config: Mapping, llm: Optional[Mapping[str, torch.Tensor]] = None,
              llm_rank: int = 0, llm_alpha: float = 0.0, llm_targets: Sequence[str] = (),
              heads: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write ``{module}.lora_A.weight`` / ``.lora_B.weight`` pairs (keys relative to the DiT) atomically.

    With ``llm`` (LoRA pairs, keys relative to the LLM) and/or ``heads`` (bridge-head deltas) the file is an
    end-to-end one (metadata ``target`` ``e2e``); their keys get the ``llm.`` / ``heads.`` prefixes."""
    from safetensors.torch import save

    meta = {"format": LORA_FORMAT, "target": "dit", "rank": str(int(rank)), "alpha": str(float(alpha)),
            "targets": json.dumps(list(targets)), "config": json.dumps(dict(config), sort_keys=True)}
    tensors = dict(tensors)
    if llm is not None or heads is not None:
        meta.update(target="e2e", llm_rank=str(int(llm_rank)), llm_alpha=str(float(llm_alpha)),
                    llm_targets=json.dumps(list(llm_targets)), heads=json.dumps(sorted(heads or {})))
        tensors.update({LLM_KEY + k: v for k, v in (llm or {}).items()})
        tensors.update({HEADS_KEY + k: v for k, v in (heads or {}).items()})
    path = Path(path)
    write_bytes_atomic(path, save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                                  metadata=meta))
    return path


@dataclass
class LoraFile:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]   # module path -> (A [r, in], B [out, r])
    scale: float                                          # alpha / rank
    metadata: dict
    llm_pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)   # e2e: LLM modules
    llm_scale: float = 0.0                                # llm_alpha / llm_rank
    heads: dict[str, torch.Tensor] = field(default_factory=dict)   # e2e: bridge-head parameter deltas

    @property
    def has_planner_part(self) -> bool:
        return bool(self.llm_pairs or self.heads)


def read_lora(path: Union[str, Path]) -> LoraFile:
    """Read and check a LoRA file: format, rank/alpha, complete A/B pairs with matching ranks."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist (train one with: python -m audiostory_core train ...).")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{path} is not a readable safetensors LoRA file ({e}).") from e
    if meta.get("format") != LORA_FORMAT:
        raise InputError(f"{path} is not an AudioStory LoRA (metadata format {meta.get('format')!r}, "
                         f"expected {LORA_FORMAT!r}).")
    target = meta.get("target", "dit")
    if target not in LORA_TARGETS:
        raise InputError(f"{path}: metadata target {target!r} is not one of {LORA_TARGETS}.")
    rank, alpha = _rank_alpha(path, meta, "rank", "alpha")
    llm_rank, llm_alpha = _rank_alpha(path, meta, "llm_rank", "llm_alpha") if target == "e2e" else (1, 0.0)
    dit_t, llm_t, heads = {}, {}, {}
    for k, v in tensors.items():
        if target == "e2e" and k.startswith(LLM_KEY):
            llm_t[k[len(LLM_KEY):]] = v
        elif target == "e2e" and k.startswith(HEADS_KEY):
            if not torch.isfinite(v).all():
                raise InputError(f"{path}: {k} holds values that are not finite.")
            heads[k[len(HEADS_KEY):]] = v
        else:
            dit_t[k] = v
    pairs = _pairs(path, dit_t, rank)
    llm_pairs = _pairs(path, llm_t, llm_rank) if llm_t else {}
    if not pairs and not llm_pairs and not heads:
        raise InputError(f"{path}: no complete lora_A/lora_B pairs.")
    return LoraFile(pairs=pairs, scale=alpha / rank, metadata=meta, llm_pairs=llm_pairs,
                    llm_scale=llm_alpha / llm_rank, heads=heads)


def _rank_alpha(path: Path, meta: dict, r_key: str, a_key: str) -> tuple[int, float]:
    try:
        rank, alpha = int(meta[r_key]), float(meta[a_key])
    except (KeyError, ValueError) as e:
        raise InputError(f"{path}: metadata '{r_key}'/'{a_key}' missing or not numbers.") from e
    if rank < 1 or not math.isfinite(alpha):
        raise InputError(f"{path}: {r_key} {rank} / {a_key} {alpha} are not valid.")
    return rank, alpha


def _pairs(path: Path, tensors: dict[str, torch.Tensor], rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Complete, finite A/B pairs of ``rank`` (an empty dict for no tensors)."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for k in tensors:
        if not k.endswith(".lora_A.weight"):
            if not k.endswith(".lora_B.weight"):
                raise InputError(f"{path}: unexpected tensor {k!r} (only *.lora_A.weight / *.lora_B.weight).")
            continue
        mod = k[: -len(".lora_A.weight")]
        a, b = tensors[k], tensors.get(mod + ".lora_B.weight")
        if b is None:
            raise InputError(f"{path}: {mod}.lora_A.weight has no matching lora_B.weight.")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise InputError(f"{path}: {mod} has A {tuple(a.shape)} and B {tuple(b.shape)}; "
                             f"expected [{rank}, in] and [out, {rank}].")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise InputError(f"{path}: {mod} holds values that are not finite.")
        pairs[mod] = (a, b)
    if tensors and (not pairs or len(pairs) * 2 != len(tensors)):
        raise InputError(f"{path}: no complete lora_A/lora_B pairs.")
    return pairs


@torch.no_grad()
def apply_lora(model: torch.nn.Module, lora: Union[LoraFile, str, Path], strength: float = 1.0) -> int:
    """Add ``strength · scale · B @ A`` to each target weight of ``model`` in memory; returns the count.

    Every target must exist with the right shape (a named error otherwise, before any weight changes)."""
    strength = check_strength(strength)
    lf = lora if isinstance(lora, LoraFile) else read_lora(lora)
    return _apply_pairs(model, lf.pairs, lf.scale * strength, "")


def _apply_pairs(model: torch.nn.Module, pairs: dict, scale: float, what: str) -> int:
    modules = dict(model.named_modules())
    todo = []
    for mod, (a, b) in pairs.items():
        m = modules.get(mod)
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise InputError(f"The LoRA targets {what}{mod!r}, which this model does not have (a LoRA for another "
                             "model?).")
        if tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise InputError(f"The LoRA's {what}{mod} is [{b.shape[0]}, {a.shape[1]}] but the model's weight is "
                             f"{list(w.shape)} (a LoRA for another model size?).")
        todo.append((w, a, b))
    for w, a, b in todo:
        delta = (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)) * scale
        w.copy_((w.float() + delta).to(w.dtype))
    return len(todo)


@torch.no_grad()
def apply_planner_lora(planner, lora: Union[LoraFile, str, Path], strength: float = 1.0) -> int:
    """The planner part of an end-to-end file: ``W + strength · llm_alpha/llm_rank · B @ A`` on the LLM (the
    release's LoRA merge) and ``p + strength · delta`` on the bridge heads; returns the count (0 for a DiT-only
    file). Every target is checked before any weight changes."""
    strength = check_strength(strength)
    lf = lora if isinstance(lora, LoraFile) else read_lora(lora)
    params = dict(planner.heads.named_parameters())
    for k, d in lf.heads.items():
        p = params.get(k)
        if p is None or tuple(p.shape) != tuple(d.shape):
            raise InputError(f"The LoRA's bridge-head tensor {k!r} {tuple(d.shape)} does not match this planner "
                             f"({'no such parameter' if p is None else tuple(p.shape)}).")
    modules = dict(planner.llm.named_modules())
    for mod, (a, b) in lf.llm_pairs.items():   # check first: nothing changes on an error
        w = getattr(modules.get(mod), "weight", None)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise InputError(f"The LoRA targets the LLM's {mod!r}, which this planner does not have with shape "
                             f"[{b.shape[0]}, {a.shape[1]}] (a LoRA for another model?).")
    n = _apply_pairs(planner.llm, lf.llm_pairs, lf.llm_scale * strength, "the LLM's ")
    for k, d in lf.heads.items():
        p = params[k]
        p.copy_((p.float() + d.to(p.device, torch.float32) * strength).to(p.dtype))
    return n + len(lf.heads)


def read_loras(texts: Sequence[str]) -> list[tuple[LoraFile, float]]:
    """Parse and read every ``FILE[:strength]`` before any model changes (their deltas add up when applied)."""
    if len(texts) > MAX_LORAS:
        raise InputError(f"{len(texts)} LoRAs given; the limit is {MAX_LORAS}.")
    specs = [LoraSpec.parse(t) for t in texts]
    return [(read_lora(s.path), s.strength) for s in specs]


def lora_metadata(path: Union[str, Path]) -> Optional[dict]:
    """The metadata of a LoRA file, or None when it is not one (for listings)."""
    try:
        return read_lora(path).metadata
    except InputError:
        return None
