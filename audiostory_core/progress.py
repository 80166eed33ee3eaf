"""Progress reporting and interruption, shared by every stage.

Stages call ``report(stage, done, total)`` and ``check()`` in their loops. The CLI plugs in a
tqdm bar; the ComfyUI nodes plug in ``ProgressBar`` and ``processing_interrupted``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .errors import GenerationInterrupted

ProgressFn = Callable[[str, int, int], None]
InterruptFn = Callable[[], bool]
TextFn = Callable[[str], None]


@dataclass
class Hooks:
    """Callbacks a stage may use; every field is optional."""

    progress: Optional[ProgressFn] = None   # (stage, done, total)
    interrupt: Optional[InterruptFn] = None  # returns True when the run must stop
    text: Optional[TextFn] = None            # streamed text (the plan as it is decoded)

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def check(self) -> None:
        if self.interrupt is not None and self.interrupt():
            raise GenerationInterrupted("interrupted by the user")

    def emit(self, text: str) -> None:
        if self.text is not None:
            self.text(text)


NO_HOOKS = Hooks()


def as_hooks(hooks: Optional[Hooks]) -> Hooks:
    return hooks if hooks is not None else NO_HOOKS
