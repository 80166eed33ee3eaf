"""The AudioStory token grammar: added vocabulary, prompt template and transcript parsing.

Everything here mirrors the official code (TencentARC/AudioStory @ 899d4f9): the 612 added
tokens in the key order of ``tokenizer/added_tokens.json``, the Qwen chat template that ends
with ``<|think|>``, and the event layout

    <|gen|> caption <timestamp>d</timestamp> <t5> q_0..q_{N-1} </t5> <aud> r_0..r_{M-1} </aud> <|/gen|>
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

from ..settings import LEAD_PHRASES, lead_phrase  # noqa: F401 - the lead_phrase setting's phrases

T5_OPEN, T5_CLOSE, T5_QUERY = "<t5>", "</t5>", "<t5_{:05d}>"
AUD_OPEN, AUD_CLOSE, AUD_QUERY = "<aud>", "</aud>", "<aud_{:05d}>"
GEN_OPEN, GEN_CLOSE = "<|gen|>", "<|/gen|>"
THINK_OPEN, THINK_CLOSE = "<|think|>", "<|/think|>"
TS_OPEN, TS_CLOSE = "<timestamp>", "</timestamp>"
VIDEO_PAD = "<video_padding>"

MAX_T5_QUERIES = 100
MAX_AUD_QUERIES = 501


def added_tokens() -> list[str]:
    """The 612 AudioStory tokens in the key order of the official ``added_tokens.json``.

    The ids written in that file are wrong (duplicates, beyond the vocabulary); only the order
    matters, because ``tokenizer.add_tokens`` assigns ids sequentially.
    """
    return (
        [T5_CLOSE, VIDEO_PAD, TS_OPEN, TS_CLOSE, T5_OPEN]
        + [T5_QUERY.format(i) for i in range(MAX_T5_QUERIES)]
        + [AUD_OPEN, AUD_CLOSE]
        + [AUD_QUERY.format(i) for i in range(MAX_AUD_QUERIES)]
        + [GEN_OPEN, GEN_CLOSE, THINK_OPEN, THINK_CLOSE]
    )


# Offsets of the named tokens from the first added id (151665 for the real Qwen2.5 tokenizer).
_OFFSETS = {T5_CLOSE: 0, VIDEO_PAD: 1, TS_OPEN: 2, TS_CLOSE: 3, T5_OPEN: 4,
            AUD_OPEN: 105, AUD_CLOSE: 106, GEN_OPEN: 608, GEN_CLOSE: 609,
            THINK_OPEN: 610, THINK_CLOSE: 611}


@dataclass(frozen=True)
class TokenIds:
    """Ids of the grammar tokens for one tokenizer, plus the query counts N and M."""

    base: int
    n_semantic: int
    n_residual: int
    eos: tuple[int, ...] = ()

    def _id(self, tok: str) -> int:
        return self.base + _OFFSETS[tok]

    @property
    def t5_open(self) -> int: return self._id(T5_OPEN)
    @property
    def t5_close(self) -> int: return self._id(T5_CLOSE)
    @property
    def aud_open(self) -> int: return self._id(AUD_OPEN)
    @property
    def aud_close(self) -> int: return self._id(AUD_CLOSE)
    @property
    def gen_open(self) -> int: return self._id(GEN_OPEN)
    @property
    def gen_close(self) -> int: return self._id(GEN_CLOSE)
    @property
    def think_close(self) -> int: return self._id(THINK_CLOSE)
    @property
    def ts_open(self) -> int: return self._id(TS_OPEN)
    @property
    def ts_close(self) -> int: return self._id(TS_CLOSE)

    def semantic_block(self) -> list[int]:
        """[<t5>, q_0 .. q_{N-1}, </t5>] as the official logits processor encodes it."""
        return [self.t5_open] + [self.base + 5 + i for i in range(self.n_semantic)] + [self.t5_close]

    def residual_block(self) -> list[int]:
        """[<aud>, r_0 .. r_{M-1}, </aud>]."""
        return [self.aud_open] + [self.base + 107 + i for i in range(self.n_residual)] + [self.aud_close]


def expected_ids(base: int) -> dict[str, int]:
    """The ids every AudioStory tokenizer must give (checked at load time)."""
    return {tok: base + off for tok, off in _OFFSETS.items()}


# ---------------------------------------------------------------- prompt
SYSTEM_MESSAGE = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
USER_TURN = "<|im_start|>user\n{instruction}<|im_end|>\n"
ASSISTANT_START = "<|im_start|>assistant\n" + THINK_OPEN

def format_total_duration(total: float) -> str:
    """The official code formats the total as a Python float: 50 -> '50.0'."""
    return str(float(total))


def build_instruction(description: str, total_duration: float, lead: str = "") -> str:
    whole = (lead + description).strip()
    return f"{whole} The total duration is {format_total_duration(total_duration)} seconds."


def build_prompt(instruction: str) -> str:
    """System + user turn + ``<|im_start|>assistant\\n<|think|>``, encoded without special tokens."""
    return SYSTEM_MESSAGE + USER_TURN.format_map({"instruction": instruction}) + ASSISTANT_START


# ---------------------------------------------------------------- escaping user text
def encode_plain(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` as plain text: typed ``<|im_end|>``, ``<|gen|>``, ``<t5_00000>`` ... never become
    control ids (no special or added token is matched), so user text cannot close its turn or forge events.

    Text holding no added-token string gets exactly the ids of ``tokenizer.encode`` (the same normalizer,
    pre-tokenizer and BPE model; only the added-vocabulary matching is skipped).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(backend, "model", None) is not None:
        norm = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        pieces = backend.pre_tokenizer.pre_tokenize_str(norm) if backend.pre_tokenizer is not None else [(norm, None)]
        return [t.id for piece, _ in pieces for t in backend.model.tokenize(piece)]
    # Slow (pure Python) tokenizers: their _tokenize runs the BPE without the added-token trie.
    import unicodedata

    return tokenizer.convert_tokens_to_ids(tokenizer._tokenize(unicodedata.normalize("NFC", text)))


def encode_template(tokenizer, parts: Sequence[tuple[str, bool]]) -> list[int]:
    """Concatenate ``(text, is_user_text)`` parts: template parts are encoded normally (their control
    tokens are real), user parts with :func:`encode_plain`.

    Control tokens split the text into independently encoded chunks, so as long as every user part is
    bounded by control tokens (as in the chat template) the ids equal those of encoding the joined string.
    """
    ids: list[int] = []
    for text, user in parts:
        if not text:
            continue
        ids += encode_plain(tokenizer, text) if user else tokenizer.encode(text, add_special_tokens=False)
    return ids


def encode_user_turn(tokenizer, user_text: Union[str, Sequence[tuple[str, bool]]],
                     tail: str = ASSISTANT_START) -> list[int]:
    """``<|im_start|>user\\n{user_text}<|im_end|>\\n`` + ``tail`` with the user text escaped.

    ``user\\n{user_text}`` is one chunk between ``<|im_start|>`` and ``<|im_end|>``, exactly the chunk the
    official ``tokenizer.encode(prompt)`` sees, so ordinary text gives identical ids. ``user_text`` may
    also be ``(text, is_user_text)`` segments, e.g. audio placeholders (control tokens) + the instruction.
    """
    segments = [(user_text, True)] if isinstance(user_text, str) else list(user_text)
    parts: list[tuple[str, bool]] = [("<|im_start|>", False), ("user\n", True)]
    for text, user in segments:
        if user and parts[-1][1]:
            parts[-1] = (parts[-1][0] + text, True)   # adjacent user text is one chunk, as in the official string
        else:
            parts.append((text, user))
    parts.append(("<|im_end|>\n" + tail, False))
    return encode_template(tokenizer, parts)


def encode_prompt(tokenizer, instruction: Union[str, Sequence[tuple[str, bool]]]) -> list[int]:
    """The official prompt (:func:`build_prompt`) with the instruction escaped (see :func:`encode_user_turn`)."""
    return tokenizer.encode(SYSTEM_MESSAGE, add_special_tokens=False) + encode_user_turn(tokenizer, instruction)


def encode_caption_span(tokenizer, text: str) -> list[int]:
    """An event's caption span (``caption <timestamp>d</timestamp>``): the last timestamp pair (the one
    :func:`render_caption` writes) is made of control tokens, everything else (the user's caption, even
    if it types ``<timestamp>`` or ``<|gen|>``) is plain text."""
    e = text.rfind(TS_CLOSE)
    s = text.rfind(TS_OPEN, 0, e) if e != -1 else -1
    if s == -1:
        return encode_template(tokenizer, [(text, True)])
    return encode_template(tokenizer, [(text[:s], True), (TS_OPEN, False), (text[s + len(TS_OPEN):e], True),
                                       (TS_CLOSE, False), (text[e + len(TS_CLOSE):], True)])


# ---------------------------------------------------------------- captions
def split_caption(text: str) -> tuple[str, float | None]:
    """Split a caption span into (text outside <timestamp>..</timestamp>, duration or None).

    Same rule as ``extract_content_and_duration`` in the official inference script.
    """
    start, end = text.find(TS_OPEN), text.find(TS_CLOSE)
    if start == -1 or end == -1 or end < start:
        return text.strip(), None
    content = (text[:start] + text[end + len(TS_CLOSE):]).strip()
    dur = text[start + len(TS_OPEN):end].strip()
    try:
        return content, (float(dur) if dur else None)
    except ValueError:
        return content, None


def format_duration(d: float) -> str:
    """Seconds as written inside <timestamp>: shortest float form, at most 2 decimals."""
    return str(round(float(d), 2))


def render_caption(caption: str, duration: float, template: str | None = None) -> str:
    """Caption span text for an (edited) event.

    When the original span is given and still describes the same caption, only the number inside
    the timestamp changes, so the layout the LLM chose (tag before or after the text) is kept.
    """
    if template is not None:
        old_caption, old_dur = split_caption(template)
        s, e = template.find(TS_OPEN), template.find(TS_CLOSE)
        if old_caption == caption.strip() and s != -1 and e > s:
            if old_dur is not None and float(old_dur) == float(duration):
                return template
            return template[: s + len(TS_OPEN)] + format_duration(duration) + template[e:]
    return f"{caption.strip()} {TS_OPEN}{format_duration(duration)}{TS_CLOSE}"


@dataclass
class ParsedEvent:
    """One event located in a generated transcript (indices into the generated ids)."""

    index: int
    gen_pos: int               # position of <|gen|>
    t5_open_pos: int           # position of <t5>
    t5_close_pos: int          # position of </t5>
    aud_close_pos: int         # position of </aud>
    end_pos: int               # exclusive end of the event span (after </aud> and <|/gen|> if present)
    text: str                  # caption span text (between <|gen|> and <t5>)
    caption: str
    duration: float | None


@dataclass
class ParsedTranscript:
    reasoning: str
    events: list[ParsedEvent]
    problems: list[str] = field(default_factory=list)


def parse_transcript(ids: Sequence[int], tok: TokenIds, decode) -> ParsedTranscript:
    """Find reasoning and well-formed events in generated ids.

    Unlike the official parser (which pairs the i-th ``<|gen|>``, ``</t5>`` and ``</aud>`` and
    drops the whole story on any mismatch), each event is validated on its own: a malformed or
    truncated event is reported in ``problems`` and skipped, and the valid ones are kept. For
    well-formed transcripts the result equals the official parse.
    """
    ids = list(ids)
    problems: list[str] = []
    n, m = tok.n_semantic, tok.n_residual
    sem_block, res_block = tok.semantic_block(), tok.residual_block()

    if tok.think_close in ids:
        reasoning = decode(ids[: ids.index(tok.think_close)])
    else:
        first = ids.index(tok.gen_open) if tok.gen_open in ids else len(ids)
        reasoning = decode(ids[:first])
        problems.append("no <|/think|> after the reasoning")

    gen_positions = [i for i, t in enumerate(ids) if t == tok.gen_open]
    if not gen_positions:
        problems.append("no event (<|gen|>) was generated")
    events: list[ParsedEvent] = []
    for k, g in enumerate(gen_positions):
        stop = gen_positions[k + 1] if k + 1 < len(gen_positions) else len(ids)
        span = ids[g:stop]
        label = f"event {k + 1}"
        try:
            o = span.index(tok.t5_open)
        except ValueError:
            problems.append(f"{label}: no <t5> block (truncated or malformed); skipped")
            continue
        if span[o:o + n + 2] != sem_block:
            problems.append(f"{label}: semantic block is not <t5> + {n} queries + </t5>; skipped")
            continue
        a = o + n + 2
        if span[a:a + m + 2] != res_block:
            problems.append(f"{label}: residual block is not <aud> + {m} queries + </aud>; skipped")
            continue
        end = a + m + 2
        if end < len(span) and span[end] == tok.gen_close:
            end += 1
        text = decode(span[1:o])
        caption, duration = split_caption(text)
        if duration is None:
            problems.append(f"{label}: no valid <timestamp>seconds</timestamp> in {text!r}; skipped")
            continue
        if duration <= 0:
            problems.append(f"{label}: duration {duration} s is not positive; skipped")
            continue
        events.append(ParsedEvent(index=len(events), gen_pos=g, t5_open_pos=g + o,
                                  t5_close_pos=g + o + n + 1, aud_close_pos=g + a + m + 1,
                                  end_pos=g + end, text=text, caption=caption, duration=duration))
    return ParsedTranscript(reasoning=reasoning, events=events, problems=problems)
