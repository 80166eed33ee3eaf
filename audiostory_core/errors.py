"""Errors with messages a user can act on."""
from __future__ import annotations


class AudioStoryError(Exception):
    """Base class for every error raised by audiostory_core."""


class ModelFilesError(AudioStoryError):
    """A weights or config file is missing, unreadable or inconsistent."""


class WeightsMismatchError(ModelFilesError):
    """A checkpoint does not match the model built from its config (strict loading)."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 wrong_shape: list[str], hint: str = ""):
        self.source, self.missing, self.unexpected, self.wrong_shape = source, missing, unexpected, wrong_shape

        def _fmt(title: str, items: list[str]) -> str:
            if not items:
                return ""
            shown = "\n    ".join(items[:20])
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"

        msg = (f"{source} does not match the model.{_fmt('missing keys', missing)}"
               f"{_fmt('unexpected keys', unexpected)}{_fmt('wrong shapes', wrong_shape)}")
        if hint:
            msg += f"\n  {hint}"
        super().__init__(msg)


class PlanError(AudioStoryError, ValueError):
    """A story plan (generated or user-written) cannot be used."""


class InputError(AudioStoryError, ValueError):
    """A user input (instruction, duration, media) is invalid."""


class GenerationInterrupted(AudioStoryError):
    """The caller asked to stop (ComfyUI Cancel, Ctrl-C); nothing was written."""


class OutputPathError(InputError):
    """An output path cannot be used: a folder, an unsupported extension, unwritable, or an input file."""


class NonFiniteError(AudioStoryError):
    """A stage produced NaN/Inf; raised before anything is written."""
