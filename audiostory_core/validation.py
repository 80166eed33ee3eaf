"""One place for argument validation: the library API, the CLI and the ComfyUI nodes all call these.

Every check raises a typed :class:`~audiostory_core.errors.AudioStoryError` whose message names the
argument, the value and what to do instead. The checks are cheap and load nothing, so callers run them
before any model is loaded or any work is done. The limits are listed in the README ("Errors and limits").
"""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from .errors import AudioStoryError, InputError, NonFiniteError, OutputPathError, PlanError
from .models.config import clip_seconds
from .settings import SETTINGS, RenderSettings, lead_phrase

PathLike = Union[str, Path]

# ---------------------------------------------------------------- limits
MAX_TOTAL_SECONDS = 600.0          # story length (instruction and plan alike)
MIN_EVENT_SECONDS = 0.1            # shorter clips have (almost) no samples after the VAE trim
MAX_EVENTS = 100                   # a 1600-token plan holds ~20 events with the release's 64+8 queries
MAX_CAPTION_CHARS = 1000           # one event caption
MAX_INSTRUCTION_CHARS = 20000      # instruction / brief (a dubbing brief lists every scene)
MAX_NAME_CHARS = 1000              # a file name / prefix, a placeholder, an event list typed on a node
MAX_REASONING_CHARS = 200000       # a plan's reasoning: the planner writes at most MAX_NEW_TOKENS tokens
MAX_NOTE_CHARS = 2000              # one entry of a plan's "problems" / one event's decoded "text"
MAX_LIST_ITEMS = 32768             # any other list read from a file (e.g. a memory file's events)
MAX_JSON_BYTES = 4 * 2 ** 20       # one plan / scenes / captions / batch-line JSON text
MAX_MEMORY_JSON_BYTES = 16 * MAX_JSON_BYTES   # a memory file's metadata: every chapter's plan JSON
MAX_JSON_DEPTH = 32                # a plan nests 3 levels; deeper text is refused before it is parsed
# the render settings' limits are declared in settings.py (RenderSettings); these names read them
MAX_STEPS = SETTINGS["steps"].max
MAX_GUIDANCE = SETTINGS["guidance"].max
MAX_CROSSFADE = SETTINGS["crossfade"].max
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = SETTINGS["sample_rate"].min, SETTINGS["sample_rate"].max
MAX_SEED = SETTINGS["seed"].max    # ComfyUI's seed range; clip i of noise=seeded uses (seed + i) mod 2**64
MAX_NEW_TOKENS = SETTINGS["max_new_tokens"].max
AUDIO_FORMATS = ("wav", "flac")


# ---------------------------------------------------------------- numbers
def _number(value: Any, what: str, integer: bool = False) -> float:
    """A real number (ints, floats, numpy scalars; not bools or strings)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a number, got {value!r}.")
    if integer and not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or value != int(value):
            raise InputError(f"{what} must be a whole number, got {value!r}.")
    if integer:
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise InputError(f"{what} is far too large: {value!r}.") from None


def check_steps(steps: Any) -> int:
    v = _number(steps, "steps", integer=True)
    if not 1 <= v <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {int(v)} (50 is the reference).")
    return int(v)


def check_guidance(guidance: Any) -> float:
    v = _number(guidance, "guidance")
    if not math.isfinite(v) or not 0.0 <= v <= MAX_GUIDANCE:
        raise InputError(f"guidance must be a finite number between 0 and {MAX_GUIDANCE:g}, got {guidance!r} "
                         "(4.0 is the reference; <= 1 disables classifier-free guidance).")
    return v


def check_seed(seed: Any) -> int:
    _number(seed, "seed", integer=True)
    if not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"seed must be between 0 and 2**64-1 ({MAX_SEED}), got {seed}.")
    return int(seed)


def check_sample_rate(sample_rate: Any, allow_native: bool = False) -> int:
    """8-192 kHz; with ``allow_native`` 0 (or None) means the VAE's own rate (the nodes' and API's convention)."""
    if allow_native and sample_rate in (None, 0):
        return 0
    v = _number(sample_rate, "sample rate", integer=True)
    if not MIN_SAMPLE_RATE <= v <= MAX_SAMPLE_RATE:
        raise InputError(f"sample rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {sample_rate} "
                         "(32000 is the reference, 44100 the VAE's own rate).")
    return int(v)


def check_crossfade(crossfade: Any) -> float:
    v = _number(crossfade, "crossfade")
    if not math.isfinite(v) or not 0.0 <= v <= MAX_CROSSFADE:
        raise InputError(f"crossfade must be between 0 and {MAX_CROSSFADE:g} s, got {crossfade!r} (3.0 is the reference).")
    return v


def check_total_duration(total: Any, what: str = "duration") -> float:
    v = _number(total, what)
    if not math.isfinite(v) or not 0.0 < v <= MAX_TOTAL_SECONDS:
        raise InputError(f"{what} must be in (0, {MAX_TOTAL_SECONDS:g}] seconds, got {total!r}.")
    return v


def check_instruction(text: Any, what: str = "instruction") -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"The {what} is empty. Describe the story, e.g. "
                         "'A fire truck leaves the station with sirens blaring and drives away.'")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InputError(f"The {what} has {len(text)} characters; the limit is {MAX_INSTRUCTION_CHARS}. Shorten it.")
    return text


def check_text(text: Any, what: str, limit: int, error: type = InputError) -> str:
    """A string of at most ``limit`` characters (any string field of a plan, memory or batch line)."""
    if not isinstance(text, str):
        raise error(f"{what} must be a string, got {type(text).__name__}.")
    if len(text) > limit:
        raise error(f"{what} has {len(text)} characters; the limit is {limit}. Shorten it.")
    return text


def check_list(items: Any, what: str, limit: int = MAX_LIST_ITEMS, error: type = InputError) -> list:
    """A list of at most ``limit`` items."""
    if not isinstance(items, list):
        raise error(f"{what} must be a list, got {type(items).__name__}.")
    if len(items) > limit:
        raise error(f"{what} has {len(items)} items; the limit is {limit}.")
    return items


TEXT_LIMITS = {"instruction": MAX_INSTRUCTION_CHARS, "brief": MAX_INSTRUCTION_CHARS,
               "captions": MAX_INSTRUCTION_CHARS, "audio_description": MAX_INSTRUCTION_CHARS,
               "placeholder": MAX_NAME_CHARS, "render_events": MAX_NAME_CHARS, "path": MAX_NAME_CHARS,
               "filename_prefix": MAX_NAME_CHARS}
"""The bound of every free-text input a node or command takes (plan JSON: :func:`parse_json`)."""
PATH_TEXTS = ("path", "filename_prefix")


def check_texts(**values: Any) -> None:
    """Each named text within its :data:`TEXT_LIMITS` bound (None: a linked input, checked when it runs);
    file names also without NUL bytes, which no file system accepts."""
    for name, value in values.items():
        if value is None:
            continue
        check_text(value, name, TEXT_LIMITS[name])
        if name in PATH_TEXTS and "\x00" in value:
            raise InputError(f"{name} contains a NUL byte (\\x00), which no file name can hold; remove it.")


def _json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text, found without parsing it (strings skipped)."""
    import itertools
    import re

    brackets = re.sub(r'"(?:[^"\\]|\\.)*"|[^\[\]{}"]+', "", text)
    if not brackets:
        return 0
    steps = brackets.translate(str.maketrans({"[": "1", "{": "1", "]": "0", "}": "0"}))
    return max(itertools.accumulate(1 if c == "1" else -1 for c in steps))


def check_json_text(text: Any, what: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
                    error: type = InputError) -> str:
    """Untrusted JSON text, before it is parsed: its size and nesting depth (cheap, linear checks), so a
    huge or deeply nested value is a clear error in milliseconds instead of minutes of CPU, gigabytes of
    memory or a ``RecursionError``. Returns the text (bytes are decoded as UTF-8)."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise error(f"{what} is {len(text)} bytes; the limit is {max_bytes} ({max_bytes // 2 ** 20} MiB).")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what} is not UTF-8 text (byte {e.start}).") from None
    if not isinstance(text, str):
        raise error(f"{what} must be JSON text, got {type(text).__name__}.")
    if len(text) > max_bytes:      # characters <= bytes: a cheap lower bound, then the exact size
        raise error(f"{what} has {len(text)} characters; the limit is {max_bytes} bytes "
                    f"({max_bytes // 2 ** 20} MiB).")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise error(f"{what} is {size} bytes; the limit is {max_bytes} ({max_bytes // 2 ** 20} MiB).")
    depth = _json_depth(text)
    if depth > max_depth:
        raise error(f"{what} nests {depth} levels deep; the limit is {max_depth}.")
    return text


def parse_json(text: Any, what: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
               error: type = InputError) -> Any:
    """``json.loads`` for untrusted text, after :func:`check_json_text`."""
    import json

    text = check_json_text(text, what, max_bytes=max_bytes, max_depth=max_depth, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} is invalid at line {e.lineno}, column {e.colno}: {e.msg}.") from None


def read_text_file(path: PathLike, what: str, max_bytes: int = MAX_JSON_BYTES, error: type = InputError) -> str:
    """A UTF-8 text file of at most ``max_bytes``: the size is checked before anything is read."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"Cannot read {what} {p}: {e.strerror or e}.") from None
    if len(data) > max_bytes:
        raise error(f"{what} {p} is larger than {max_bytes} bytes ({max_bytes // 2 ** 20} MiB); is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start}).") from None


def check_max_new_tokens(n: Any) -> int:
    v = _number(n, "max_new_tokens", integer=True)
    if not 1 <= v <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {n} (1600 is the reference).")
    return int(v)


def check_choice(value: Any, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def check_lead_phrase(choice: Any, seed: int = 0) -> str:
    """The lead-phrase text for ``none`` / ``random`` / an index (raises InputError otherwise)."""
    return lead_phrase(choice, seed)


def check_device(device: Optional[str]):
    """``auto``/None, ``cpu``, ``cuda``, ``cuda:N``, ``mps``...: a usable ``torch.device`` or a clear error."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:1, mps ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: no CUDA GPU is available to this PyTorch "
                             f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'}); "
                             "use --device cpu (or auto).")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device {device!r}: there are {n} CUDA device(s) (cuda:0..cuda:{n - 1}).")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"device {device!r}: Apple MPS is not available here; use cpu (or auto).")
    elif dev.type != "cpu":
        mod = getattr(torch, dev.type, None)
        if mod is None or not hasattr(mod, "is_available") or not mod.is_available():
            raise InputError(f"device {device!r} is not available here; use auto, cpu or cuda.")
    return dev


# ---------------------------------------------------------------- render arguments (API, CLI, nodes)
def check_setting(name: str, value: Any, allow_native_rate: bool = True) -> Any:
    """One :class:`~audiostory_core.settings.RenderSettings` value, checked against its declared limit or
    choices and normalised (``allow_native_rate``: sample rate 0 = the VAE's own rate)."""
    spec = SETTINGS[name]
    if spec.choices:
        return check_choice(value, spec.choices, name)
    if name == "sample_rate":
        return check_sample_rate(value, allow_native=allow_native_rate)
    if name == "lead_phrase":
        check_lead_phrase(value)
        return value
    return {"seed": check_seed, "steps": check_steps, "guidance": check_guidance, "crossfade": check_crossfade,
            "max_new_tokens": check_max_new_tokens}[name](value)


def check_settings(settings: RenderSettings, allow_native_rate: bool = True) -> RenderSettings:
    """Every setting checked and normalised, each error naming its key (batch lines, the CLI's defaults)."""
    values = {}
    for name in SETTINGS:
        try:
            values[name] = check_setting(name, getattr(settings, name), allow_native_rate)
        except (AudioStoryError, TypeError, ValueError) as e:
            raise InputError(f"'{name}': {e}") from e
    return RenderSettings(**values)


def check_render_args(*, steps: Any = 50, guidance: Any = 4.0, seed: Any = 0, sample_rate: Any = 32000,
                      crossfade: Any = 3.0, noise: str = "seeded", sampler: str = "euler",
                      crossfade_curve: str = "linear", allow_native_rate: bool = True) -> None:
    """Everything a render needs, checked together before anything is loaded or planned."""
    for name, value in dict(steps=steps, guidance=guidance, seed=seed, sample_rate=sample_rate,
                            crossfade=crossfade, noise=noise, sampler=sampler,
                            crossfade_curve=crossfade_curve).items():
        check_setting(name, value, allow_native_rate)


# ---------------------------------------------------------------- plans
def check_event(caption: Any, duration: Any, where: str, allow_empty_caption: bool = False) -> None:
    if not isinstance(caption, str) or not (caption.strip() or allow_empty_caption):
        raise PlanError(f"{where}.caption must be a non-empty string.")
    if len(caption) > MAX_CAPTION_CHARS:
        raise PlanError(f"{where}.caption has {len(caption)} characters; the limit is {MAX_CAPTION_CHARS}.")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise PlanError(f"{where}.duration must be a number of seconds, got {duration!r}.")
    if not math.isfinite(duration) or duration < MIN_EVENT_SECONDS:
        raise PlanError(f"{where}.duration must be > 0 and finite (at least {MIN_EVENT_SECONDS:g} s), "
                        f"got {duration!r}.")


def check_plan_events(captions: Sequence[str], durations: Sequence[float], allow_empty_captions: bool = False) -> None:
    """The same limits as an instruction: event count, caption length, finite durations, total <= 600 s.

    ``allow_empty_captions`` is for generated plans (the LLM may put only a timestamp in a caption span)."""
    if not durations:
        raise PlanError("The plan has no events.")
    if len(durations) > MAX_EVENTS:
        raise PlanError(f"The plan has {len(durations)} events; the limit is {MAX_EVENTS}.")
    for i, (c, d) in enumerate(zip(captions, durations)):
        check_event(c, d, f"events[{i}]", allow_empty_captions)
    total = float(sum(durations))
    if total > MAX_TOTAL_SECONDS:
        raise PlanError(f"The plan's events add up to {total:g} s; the limit is {MAX_TOTAL_SECONDS:g} s "
                        "(the same as for an instruction). Remove or shorten events.")


def check_transcript_ids(ids: Iterable[Any], vocab_size: Optional[int] = None) -> None:
    """Token ids of a plan's transcript: non-negative ints, and below the vocabulary when it is known."""
    bad = [x for x in ids if isinstance(x, bool) or not isinstance(x, int) or x < 0
           or (vocab_size is not None and x >= vocab_size)]
    if bad:
        lim = f"0..{vocab_size - 1}" if vocab_size is not None else ">= 0"
        raise PlanError(f"'transcript_ids' holds {len(bad)} id(s) outside {lim} (first: {bad[0]!r}); the plan was "
                        "written for another tokenizer or edited by hand. Remove 'transcript_ids' (and the "
                        "events' 'span' and 'text') to re-encode the plan from its captions.")


def clip_problems(durations: Sequence[float], crossfade: float, max_clip_seconds: float) -> list[str]:
    """Clip-length rules, the same for generated and hand-written plans.

    A clip (event + crossfade tail on all but the last) longer than the DiT window is an error
    (:class:`PlanError`): the official code would cut it short and the story would lose time.
    A clip shorter than the crossfade is joined without overlap (official rule): a warning, returned.
    """
    clips = clip_seconds(durations, crossfade)
    bad = [(i + 1, s) for i, s in enumerate(clips) if s > max_clip_seconds + 1e-6]
    if bad:
        desc = "; ".join(f"event {i}: {s:.2f} s" for i, s in bad)
        raise PlanError(f"{desc} (duration + {crossfade:g} s crossfade tail) longer than one clip can hold "
                        f"({max_clip_seconds:.2f} s for this model). Shorten or split those events in the plan "
                        "(write it with the `plan` command, edit it, render it with --plan), or lower the crossfade.")
    out = []
    for i in range(1, len(clips)):
        if crossfade > 0 and (clips[i] < crossfade or clips[i - 1] < crossfade):
            out.append(f"event {i + 1}: a clip is shorter than the {crossfade:g} s crossfade, so it is "
                       "joined without overlap (official rule); the story gets longer than planned")
    return out


def total_mismatch(durations: Sequence[float], requested: Optional[float], crossfade: float) -> list[str]:
    """A warning when the plan's total differs from the requested duration by more than a crossfade."""
    if not requested:
        return []
    total = float(sum(durations))
    if abs(total - float(requested)) > max(float(crossfade), 1e-6):
        return [f"the plan's events add up to {total:.2f} s but {float(requested):g} s was requested "
                f"(more than the {crossfade:g} s crossfade apart)"]
    return []


# ---------------------------------------------------------------- tensors
def check_finite(tensor, stage: str, cause: str) -> None:
    """Refuse NaN/Inf before it becomes a file: the error names the stage and the likely cause."""
    import torch

    if tensor is None or tensor.numel() == 0:
        return
    ok = torch.isfinite(tensor)
    if bool(ok.all()):
        return
    n = int((~ok).sum())
    raise NonFiniteError(f"The {stage} produced {n} non-finite value(s) (NaN/Inf) out of {tensor.numel()}; "
                         f"nothing was written. Likely cause: {cause}.")


# ---------------------------------------------------------------- files
def same_file(a: PathLike, b: PathLike) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _writable_folder(folder: Path, what: str) -> None:
    """The nearest existing ancestor must be a folder we can create files in (probed, not guessed)."""
    anc = folder
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputPathError(f"{what}: cannot create {folder}: {anc} is a file, not a folder.")
    if anc == folder:
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".audiostory-probe-")
        except OSError as e:
            raise OutputPathError(f"{what}: cannot write into {folder} ({e.strerror or e}); choose a writable "
                                  "folder.") from None
        os.close(fd)
        os.unlink(probe)
    elif not os.access(anc, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: cannot create folders under {anc} (not writable); choose a writable folder.")


def check_output_file(path: PathLike, *, formats: Optional[Sequence[str]] = None, inputs: Iterable[Any] = (),
                      what: str = "output") -> Path:
    """An output file we can write: not a folder, a supported extension, a writable folder, not an input.

    ``inputs`` are the input paths of the same command (None entries are skipped); writing over one of
    them would destroy it, so it is refused.
    """
    if path is None or not str(path).strip():
        raise OutputPathError(f"{what}: no output file given.")
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputPathError(f"{what} {p} is an existing folder; give a file name inside it, e.g. {p / 'story.wav'}.")
    if formats is not None:
        ext = p.suffix.lower().lstrip(".")
        if ext not in formats:
            raise OutputPathError(f"{what} {p.name}: unsupported extension {p.suffix or '(none)'!r} for this command; "
                                  f"use {', '.join('.' + f for f in formats)}.")
    for inp in inputs:
        if inp is not None and str(inp).strip() and same_file(p, inp):
            raise OutputPathError(f"{what} {p} is also an input of this command; writing it would destroy the "
                                  "input. Choose another output name.")
    _writable_folder(p.parent, what)
    return p


def check_outside_input_folder(path: PathLike, folder: Any, what: str, folder_what: str) -> None:
    """An output may not lie inside a folder the command reads (e.g. ``--out`` in the ``--reuse`` dump):
    writing there would replace the files being read."""
    if folder is None or not str(folder).strip():
        return
    p, f = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    if p == f or f in p.parents:
        raise OutputPathError(f"{what} {path} lies inside {folder_what} {folder}, which this command reads; "
                              "writing there would replace its files. Choose a path outside it.")


def check_output_folder(path: PathLike, *, files: Sequence[str] = (), inputs: Iterable[Any] = (),
                        what: str = "output folder") -> Path:
    """A folder to write ``files`` into: not an existing file, writable, and none of its files an input."""
    if path is None or not str(path).strip():
        raise OutputPathError(f"{what}: no folder given.")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{what} {p} is an existing file; it needs a folder (a new or existing directory).")
    inputs = [i for i in inputs if i is not None and str(i).strip()]
    for name in files:
        for inp in inputs:
            if same_file(p / name, inp):
                raise OutputPathError(f"{what} {p} would overwrite the input {inp} with its {name}; choose "
                                      "another folder.")
    _writable_folder(p, what)
    return p


def check_input_file(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{what} {p} " + ("is a folder, not a file." if p.is_dir() else "does not exist."))
    return p
