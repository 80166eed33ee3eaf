"""Progress and text streaming from the core's hooks to the nodes: readable plan text, throttling, bars.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

_SPECIAL = re.compile(r"<\|[^|<>]*\|>|</?t5(?:_\d+)?>|</?aud(?:_\d+)?>|<video_padding>")


def readable_stream(raw: str) -> str:
    """A partial plan transcript (the decoded tokens so far) in the form of the final plan text.

    ``reasoning <|/think|> <|gen|> caption <timestamp>d</timestamp> <t5>... <aud>... <|/gen|> ...`` becomes
    the reasoning, a blank line and ``1. [4 s] caption`` per event, like ``StoryPlan.text()``; an event
    still being written shows its caption so far. Query tokens and other control tokens never show.
    """
    think = "<|/think|>"
    reasoning, _, rest = raw.partition(think)
    reasoning = _SPECIAL.sub("", reasoning).strip()
    if not _:
        return reasoning
    lines = [reasoning, ""]
    for n, chunk in enumerate(rest.split("<|gen|>")[1:], start=1):
        body = chunk.split("<t5>")[0].split("<|/gen|>")[0]
        m = re.search(r"<timestamp>(.*?)(</timestamp>|$)", body, flags=re.S)
        dur = None
        if m and m.group(2):
            try:
                dur = float(m.group(1).strip())
            except ValueError:
                dur = None
        caption = _SPECIAL.sub("", re.sub(r"<timestamp>.*?(</timestamp>|$)", " ", body, flags=re.S))
        caption = re.sub(r"\s+", " ", caption).strip()
        lines.append(f"{n}. [{dur:g} s] {caption}" if dur is not None else f"{n}. {caption}".rstrip())
    return "\n".join(lines)


class ReadableStream:
    """Hooks.text sink: turns each raw partial transcript into :func:`readable_stream` text, then sends it.

    A word still being decoded (the transcript ends inside it, e.g. "lo" of "loud") is held back until it
    is complete, so the node never shows half a word."""

    def __init__(self, send: Callable[[str], None]):
        self.send = send

    def __call__(self, raw: str) -> None:
        self.send(readable_stream(re.sub(r"\w+$", "", raw)))


class TextThrottle:
    """Forward streamed text at most every ``interval`` seconds (plus the final text)."""

    def __init__(self, send: Callable[[str], None], interval: float = 0.15, clock: Callable[[], float] = None):
        import time

        self.send, self.interval = send, interval
        self.clock = clock or time.monotonic
        self.last = -1e9
        self.pending: Optional[str] = None

    def __call__(self, text: str) -> None:
        now = self.clock()
        if now - self.last >= self.interval:
            self.send(text)
            self.last, self.pending = now, None
        else:
            self.pending = text

    def flush(self) -> None:
        if self.pending is not None:
            self.send(self.pending)
            self.pending = None


class StageProgress:
    """Maps core ``Hooks.progress(stage, done, total)`` onto one progress bar per stage."""

    def __init__(self, make_bar: Callable[[int], Any]):
        self.make_bar = make_bar
        self.stage: Optional[str] = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage or self.bar is None:
            self.stage, self.bar = stage, self.make_bar(max(1, int(total)))
        self.bar.update_absolute(int(done), max(1, int(total)))
