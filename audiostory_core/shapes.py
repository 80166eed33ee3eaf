"""Shape checks for every tensor read from a file (weights, memory, dumps, caches).

A tensor of the wrong shape often does not fail where it is loaded: a ``[1, in]`` weight broadcasts in
the LoRA merge, a ``[N]`` token set broadcasts in an addition. So each loader states the shape it
expects, and a mismatch raises :class:`WeightsMismatchError` naming the key, the file's shape and the
expected one, before anything runs.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from .errors import WeightsMismatchError

Shape = Sequence[Optional[int]]   # None: any size along that axis


def fmt_shape(shape: Shape) -> str:
    """``(2, *, 1024)``: a shape with ``*`` for an axis of any size."""
    dims = ["*" if d is None else str(int(d)) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def shape_matches(actual: Sequence[int], expected: Shape) -> bool:
    return len(actual) == len(expected) and all(e is None or int(a) == int(e) for a, e in zip(actual, expected))


def shape_problem(key: str, tensor: torch.Tensor, expected: Shape, found_in: str = "file",
                  wanted_by: str = "expected") -> Optional[str]:
    """``key: file (1, 64) vs expected (64, 64)`` when the shapes differ, else None."""
    if shape_matches(tuple(tensor.shape), expected):
        return None
    return f"{key}: {found_in} {fmt_shape(tuple(tensor.shape))} vs {wanted_by} {fmt_shape(expected)}"


def check_shapes(source: str, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, Shape],
                 hint: str = "", wanted_by: str = "expected") -> None:
    """Raise :class:`WeightsMismatchError` naming every absent key and every tensor of the wrong shape."""
    missing = [k for k in expected if k not in tensors]
    wrong = [p for k, s in expected.items() if k in tensors
             for p in [shape_problem(k, tensors[k], s, wanted_by=wanted_by)] if p]
    if missing or wrong:
        raise WeightsMismatchError(source, missing, [], wrong, hint)


def check_loading_info(source: str, info: Mapping, hint: str = "", unexpected_fatal: bool = False) -> None:
    """``from_pretrained(..., output_loading_info=True, ignore_mismatched_sizes=True)``: transformers
    would re-initialise a missing or mis-shaped weight at random (or raise an unnamed RuntimeError);
    here each one is named, with the file's and the model's shape."""
    wrong = sorted(f"{k}: file {fmt_shape(tuple(a))} vs model {fmt_shape(tuple(b))}"
                   for k, a, b in info.get("mismatched_keys") or ())
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ()) if unexpected_fatal else []
    if missing or wrong or unexpected:
        raise WeightsMismatchError(source, missing, unexpected, wrong, hint)
