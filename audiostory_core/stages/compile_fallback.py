"""Compiled (``torch.compile`` / CUDA graphs / attention backend) calls that fall back to eager.

The CUDA-only speed paths are on by default, so a failure to compile or capture must never stop a
user: the first failure switches that module to its eager forward for the rest of the process and
warns once, naming the cause. Later calls (and later stories) skip the compile attempt entirely.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch

# module -> cause of its compile/capture failure: such a module is never compiled again
_FAILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class CompileFallbackWarning(RuntimeWarning):
    """A compiled path failed; the eager (reference) forward is used from now on."""


def compile_applies(device: torch.device) -> bool:
    """The compiled paths run on CUDA only (CPU and MPS stay eager, the reference computation)."""
    return torch.device(device).type == "cuda" and hasattr(torch, "compile")


def failed(module: torch.nn.Module) -> bool:
    """Whether a compiled path of ``module`` already failed in this process."""
    return module in _FAILED


def mark_failed(module: torch.nn.Module, what: str, error: BaseException) -> None:
    """Record the failure and warn (once per module)."""
    if module in _FAILED:
        return
    cause = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    _FAILED[module] = cause
    warnings.warn(f"{what} failed ({cause}); running it eagerly from now on (same result, slower). "
                  f"Pass --no-compile (CLI) or PerfOptions(compile_dit=False, compile_decode=False) to skip "
                  f"the attempt.", CompileFallbackWarning, stacklevel=3)


class EagerFallback:
    """Calls ``fast``; on its first exception calls ``eager`` instead, now and from then on."""

    def __init__(self, module: torch.nn.Module, fast: Callable, eager: Callable, what: str):
        self.module, self.fast, self.eager, self.what = module, fast, eager, what

    def __call__(self, *args, **kwargs):
        if failed(self.module):
            return self.eager(*args, **kwargs)
        try:
            return self.fast(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compile/capture/backend error: eager gives the result
            mark_failed(self.module, self.what, e)
            return self.eager(*args, **kwargs)
