"""Node logic that needs no ComfyUI: value objects passed between nodes, validation, layout
conversions, file-name rules. The node modules are the thin ComfyUI layer over this and over
``audiostory_core``; everything here is unit-tested without a ComfyUI install.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..audiostory_core import validation
from ..audiostory_core.atomic import atomic_write
from ..audiostory_core.models.config import find_audiostory_dir
from ..audiostory_core.errors import AudioStoryError, InputError, ModelFilesError, PlanError
from ..audiostory_core.stages.event_tokens import EventTokens, clip_seconds
from ..audiostory_core.tasks.memory import StoryMemory
from ..audiostory_core.stages.plan import PlanResult, PromptContext, StoryPlan

HOP = 2048
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
NOISE_CHOICES = ("reference", "seeded")
REFERENCE_SAMPLER = "reference_euler"
MEMORY_MODES = ("new", "pass_through", "load", "save")
SAVE_FORMATS = ("wav", "flac")
CROSSFADE_CURVES = ("linear", "equal_power")
MUX_POLICIES = ("pad", "trim", "keep_video")
EXISTING_AUDIO = ("replace", "mix")
MAX_TOTAL_SECONDS = validation.MAX_TOTAL_SECONDS


# ---------------------------------------------------------------- values passed between nodes
@dataclass
class PlannerHandle:
    """AUDIOSTORY_PLANNER: the planner (LLM + tokenizer + heads) and what the other stages need.

    ``llm_patcher``/``heads_patcher`` are ComfyUI ModelPatchers (None outside ComfyUI); the
    ``planner`` object is the core :class:`~audiostory_core.loading.Planner` whose modules they manage.
    """

    planner: Any
    null_embedding: torch.Tensor          # [1, N, 1024] CFG negative, CPU
    audio_seq_len: int                    # latent frames per clip
    vae_sample_rate: int = 44100
    root_name: str = ""
    llm_patcher: Any = None
    heads_patcher: Any = None

    @property
    def max_clip_seconds(self) -> float:
        return self.audio_seq_len * HOP / self.vae_sample_rate


@dataclass
class PlanBundle:
    """STORY_PLAN: a plan plus, when it came from the planner, the generation result and the prompt
    context it was generated with (so unedited plans reuse the generated query states)."""

    plan: StoryPlan
    result: Optional[PlanResult] = None
    context: Optional[PromptContext] = None


@dataclass
class EventsBundle:
    """AUDIOSTORY_EVENTS: fused tokens [E,N,1024], durations, CFG negative and clip geometry."""

    tokens: EventTokens
    fused: torch.Tensor                  # [E, N, 1024] (memory-fused when a memory was connected), CPU
    null_embedding: torch.Tensor         # [1, N, 1024], CPU
    crossfade: float
    audio_seq_len: int
    plan: Optional[StoryPlan] = None
    vae_sample_rate: int = 44100

    @property
    def count(self) -> int:
        return int(self.fused.shape[0])

    @property
    def durations(self) -> list[float]:
        return list(self.tokens.durations)

    @property
    def clip_seconds(self) -> list[float]:
        return clip_seconds(self.durations, self.crossfade)


@dataclass
class AudioContextValue:
    """The minimal shape of an ``AUDIOSTORY_AUDIO_CONTEXT`` value: a fixed prompt context and a prefix.

    The continuation nodes pass a richer :class:`~audiostory_core.continuation.AudioContext`, which can
    build the prompt context for any instruction (``prompt_context``); see :func:`planner_audio_context`.
    """

    context: Optional[PromptContext] = None
    instruction_prefix: str = ""


def planner_audio_context(audio_context: Any, tokenizer, instruction: str,
                          total_duration: float) -> tuple[str, Optional[PromptContext]]:
    """``(lead, prompt context)`` for the Planner's OWN instruction and total duration.

    The audio tokens sit in the prompt next to the instruction, so a context built for another
    instruction or duration (e.g. the one typed on the Audio Context node) would plan from the wrong
    prompt. Contexts that can rebuild themselves (``prompt_context(tokenizer, full_instruction)``, as
    ``AudioContext`` does) are rebuilt for ``build_instruction(prefix + instruction, total_duration)``;
    the text fallback has no prompt context (None) and only contributes its prefix. Plain values with
    a fixed ``.context`` (:class:`AudioContextValue`) are used as given.
    """
    from ..audiostory_core.stages.grammar import build_instruction

    if audio_context is None:
        return "", None
    lead = getattr(audio_context, "instruction_prefix", "") or ""
    build = getattr(audio_context, "prompt_context", None)
    if callable(build):
        return lead, build(tokenizer, build_instruction(instruction, float(total_duration), lead))
    return lead, getattr(audio_context, "context", None)


# ---------------------------------------------------------------- model roots
def list_model_roots(folders: Sequence[str]) -> list[str]:
    """Names of the sub-folders of ``folders`` that hold an AudioStory checkpoint (≤ 2 levels down)."""
    found: list[str] = []
    for base in folders:
        try:
            children = sorted(p for p in Path(base).iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            try:
                find_audiostory_dir(child)
            except ModelFilesError:
                continue
            if child.name not in found:
                found.append(child.name)
    return found


def resolve_model_root(folders: Sequence[str], name: str) -> Path:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ModelFilesError(f"Invalid model folder name {name!r}.")
    for base in folders:
        p = Path(base) / name
        if p.is_dir():
            return p
    where = ", ".join(str(Path(f)) for f in folders) or "models/audiostory"
    raise ModelFilesError(
        f"Model folder {name!r} was not found in {where}. Put the AudioStory model root there, e.g. "
        f"models/audiostory/{name}/AudioStory-3B/pytorch_model.bin (see the README 'Model files').")


def no_roots_message(folders: Sequence[str]) -> str:
    where = ", ".join(str(Path(f)) for f in folders) or "ComfyUI/models/audiostory"
    return (f"No AudioStory model found in {where}. Create a folder per model there, e.g. "
            "models/audiostory/AudioStory/ holding AudioStory-3B/ (config.yaml + pytorch_model.bin), "
            "Flux_detokenizer/, Qwen2.5-3B-Instruct/ and flan-t5-large/.")


def dtype_from_choice(choice: str) -> Optional[torch.dtype]:
    """None for 'auto' (the host decides per component)."""
    table = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if choice not in table:
        raise InputError(f"dtype must be one of {DTYPE_CHOICES}, got {choice!r}")
    return table[choice]


# ---------------------------------------------------------------- validation
def instruction_problem(instruction: Any) -> Optional[str]:
    """The Planner's own check (ComfyUI cannot tell an empty story): a message, or None when fine.

    None (a linked input, unknown at validation time) is not checked here; execution checks it."""
    from ..audiostory_core.validation import check_instruction

    if instruction is None:
        return None
    try:
        check_instruction(instruction)
    except InputError as e:
        return str(e)
    return None


def sample_rate_problem(sample_rate: Any) -> Optional[str]:
    """Decode's rule, which a min/max pair cannot express: 0 (the VAE's own rate) or 8000-192000 Hz.

    Naming ``sample_rate`` in ``validate_inputs`` switches ComfyUI's own range check off for it, so this
    checks both ends."""
    from ..audiostory_core.validation import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_sample_rate

    if sample_rate is None:
        return None
    try:
        check_sample_rate(sample_rate, allow_native=True)
    except InputError:
        return (f"sample_rate must be 0 (the VAE's own rate) or between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, "
                f"got {sample_rate} (32000 is the reference output rate).")
    return None


def validate_plan_inputs(instruction: Any, total_duration: Any, max_new_tokens: Any) -> Optional[str]:
    """A ComfyUI-style validation message, or None when valid (None inputs are links: not checked).

    The rules are :mod:`audiostory_core.validation`'s, shared with the library and the CLI."""
    try:
        if instruction is not None:
            validation.check_instruction(instruction)
        if total_duration is not None:
            validation.check_total_duration(total_duration, "total_duration")
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, (int, float)) and max_new_tokens < 16:
                return f"max_new_tokens must be at least 16, got {max_new_tokens}"
            validation.check_max_new_tokens(max_new_tokens)
    except AudioStoryError as e:
        return str(e)
    return None


def parse_plan_json(text: Any, max_event_seconds: Optional[float] = None) -> StoryPlan:
    if not isinstance(text, str) or not text.strip():
        raise PlanError("The plan JSON is empty. Paste the JSON shown by AudioStoryPlanner (or write "
                        '{"instruction": "...", "reasoning": "...", "events": [{"caption": "...", "duration": 4.0}]}).')
    return StoryPlan.from_json(text, max_event_seconds=max_event_seconds)


def check_clip_lengths(durations: Sequence[float], crossfade: float, max_clip_seconds: float) -> list[str]:
    """Raise a clear error when an event (+ crossfade tail) does not fit in one DiT clip; return the
    warnings (clips shorter than the crossfade). Same rules as the library and the CLI."""
    validation.check_crossfade(crossfade)
    return validation.clip_problems(list(durations), float(crossfade), max_clip_seconds)


def describe_plan(plan: StoryPlan) -> str:
    """The finished plan as the Planner shows it after a run: the event list first (index, start-end on the
    plan's timeline, caption), then any warnings, then the reasoning."""
    lines, start = [f"{len(plan.events)} events, {sum(e.duration for e in plan.events):g} s:"], 0.0
    for i, e in enumerate(plan.events, start=1):
        lines.append(f"{i}. {start:g}\u2013{start + e.duration:g} s  {e.caption}")
        start += e.duration
    if plan.problems:
        lines += ["", "warnings:"] + [f"- {p}" for p in plan.problems]
    if plan.reasoning.strip():
        lines += ["", "reasoning: " + plan.reasoning.strip()]
    return "\n".join(lines)


# ---------------------------------------------------------------- conditioning / latents
def seconds_to_bits(seconds: Sequence[float]) -> torch.Tensor:
    """Per-event clip seconds as float32 bits in an int32 tensor.

    ComfyUI casts float conditioning tensors to the model dtype (fp16/bf16 would round 3.3 s); an
    integer tensor passes through untouched, so the DiT sees the same float32 value as the reference.
    """
    return torch.tensor([float(s) for s in seconds], dtype=torch.float32).view(torch.int32).clone()


def bits_to_seconds(bits: torch.Tensor) -> torch.Tensor:
    if bits.dtype == torch.int32:
        return bits.contiguous().view(torch.float32)
    return bits.float()


def to_comfy_latent(latents: torch.Tensor) -> torch.Tensor:
    """Core layout [E, T, 64] -> ComfyUI audio layout [E, 64, T]."""
    return latents.transpose(1, 2).contiguous()


def from_comfy_latent(samples: torch.Tensor) -> torch.Tensor:
    """ComfyUI audio layout [E, 64, T] -> core layout [E, T, 64]."""
    if samples.dim() != 3:
        raise InputError(f"An AudioStory latent is [events, 64, frames]; got shape {tuple(samples.shape)}.")
    return samples.transpose(1, 2).contiguous()


def conditioning_pair(events: EventsBundle) -> tuple[list, list]:
    """CONDITIONING positive (fused tokens) / negative (null embedding), both with per-event seconds."""
    e = events.count
    extra = {"audiostory_seconds": seconds_to_bits(events.clip_seconds), "audiostory_events": e}
    pos = [[events.fused.float().cpu(), dict(extra)]]
    neg = [[events.null_embedding.float().cpu().expand(e, -1, -1).contiguous(), dict(extra)]]
    return pos, neg


def empty_latent(events: EventsBundle) -> dict:
    return {"samples": torch.zeros(events.count, 64, events.audio_seq_len), "type": "audio"}


def check_latent_matches(samples: torch.Tensor, events: EventsBundle) -> None:
    if samples.dim() != 3 or samples.shape[1] != 64:
        raise InputError(f"The latent must be an AudioStory audio latent [events, 64, frames]; got "
                         f"{tuple(samples.shape)}.")
    if samples.shape[0] != events.count:
        raise InputError(f"The latent has {samples.shape[0]} clips but the events input has {events.count}; "
                         "connect the LATENT that was sampled from these events.")


def pad_clips(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """Clips [C, S_i] -> a batch [E, C, max S] (zero-padded at the end)."""
    n = max(c.shape[-1] for c in clips)
    ch = max(c.shape[0] for c in clips)
    out = torch.zeros(len(clips), ch, n)
    for i, c in enumerate(clips):
        out[i, : c.shape[0], : c.shape[-1]] = c
    return out


def audio_dict(wave: torch.Tensor, sample_rate: int) -> dict:
    """Core [C, S] or [B, C, S] -> ComfyUI AUDIO."""
    if wave.dim() == 2:
        wave = wave.unsqueeze(0)
    return {"waveform": wave.float().cpu().contiguous(), "sample_rate": int(sample_rate)}


def audio_from_dict(audio: Any, what: str = "audio") -> tuple[torch.Tensor, int]:
    """ComfyUI AUDIO -> ([C, S] first batch item, sample_rate) with clear errors."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError(f"{what} is not an AUDIO value (waveform + sample_rate).")
    w = audio["waveform"]
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[-1] == 0:
        raise InputError(f"{what} waveform must be [batch, channels, samples] and non-empty; got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}.")
    if w.shape[0] > 1:
        # the story is one track; a batch of clips is joined end to end
        w = torch.cat(list(w), dim=-1).unsqueeze(0)
    return w[0].float().cpu(), int(audio["sample_rate"])


# ---------------------------------------------------------------- memory
def memory_file(base: str, rel: str, suffix: str = ".safetensors") -> Path:
    """Resolve a memory path relative to ``base`` (the ComfyUI output folder); refuse escapes."""
    if not isinstance(rel, str) or not rel.strip():
        raise InputError("The memory path is empty; use e.g. 'audiostory/memory/my_story'.")
    rel = rel.strip()
    if os.path.isabs(rel) or re.match(r"^[A-Za-z]:", rel):
        raise InputError(f"Use a path relative to the ComfyUI output folder, not {rel!r}.")
    p = (Path(base) / rel)
    if p.suffix != suffix:
        p = p.with_name(p.name + suffix)
    base_r, p_r = Path(base).resolve(), p.resolve()
    if base_r != p_r and base_r not in p_r.parents:
        raise InputError(f"The memory path {rel!r} leaves the output folder.")
    return p


def memory_for(mode: str, memory: Optional[StoryMemory], path: Optional[Path], window: int,
               strength: float) -> StoryMemory:
    """The memory node's behaviour (file writing is done here too, atomically)."""
    if mode not in MEMORY_MODES:
        raise InputError(f"mode must be one of {MEMORY_MODES}, got {mode!r}")
    if mode == "new":
        return StoryMemory(window=int(window), strength=float(strength))
    if mode == "load":
        if path is None:
            raise InputError("mode 'load' needs a path.")
        return StoryMemory.load(path).with_settings(window, strength)
    if memory is None:
        raise InputError(f"mode {mode!r} needs a memory input (connect the memory output of "
                         "AudioStoryEventTokens or of another memory node).")
    mem = memory.with_settings(window, strength)
    if mode == "save":
        if path is None:
            raise InputError("mode 'save' needs a path.")
        mem.save(path)
    return mem


# ---------------------------------------------------------------- saving
def safe_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip():
        return "audio/AudioStory"
    prefix = prefix.strip().replace("\\", "/")
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise InputError(f"filename_prefix {prefix!r} must stay inside the output folder.")
    return prefix


def write_flac_with_metadata(path: Path, wave: torch.Tensor, sample_rate: int, metadata: dict) -> Path:
    """FLAC (24-bit) with vorbis comments (ComfyUI stores 'prompt' and 'workflow' there), written atomically."""
    import av
    import numpy as np

    path = Path(path)
    wave = wave.detach().float().cpu().clamp(-1.0, 1.0)
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    # hidden temp name with the real suffix: PyAV picks the muxer by it, the output list skips it
    with atomic_write(path, tmp_name=f".{path.stem}.part{path.suffix}") as tmp:
        with av.open(str(tmp), mode="w", format="flac") as out:
            for k, v in metadata.items():
                out.metadata[k] = v
            stream = out.add_stream("flac", rate=int(sample_rate), layout=layout)
            stream.codec_context.format = "s32"
            data = np.ascontiguousarray(wave.numpy())
            for start in range(0, data.shape[1], 65536):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 65536]),
                                                   format="fltp", layout=layout)
                frame.sample_rate = int(sample_rate)
                frame.pts = start
                for p in stream.encode(frame):
                    out.mux(p)
            for p in stream.encode(None):
                out.mux(p)
    return path


def workflow_metadata(prompt: Any, extra_pnginfo: Any) -> dict:
    meta = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for k, v in extra_pnginfo.items():
            meta[k] = json.dumps(v)
    return meta


# ---------------------------------------------------------------- dtypes and memory estimates
FP8_DTYPE_NAMES = ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz")


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


# ---------------------------------------------------------------- progress / text streaming
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


def user_error(e: BaseException) -> str:
    """A one-line prefix for errors shown in ComfyUI."""
    kind = {ModelFilesError: "Model files", PlanError: "Plan", InputError: "Input"}
    for k, v in kind.items():
        if isinstance(e, k):
            return f"AudioStory ({v}): {e}"
    if isinstance(e, AudioStoryError):
        return f"AudioStory: {e}"
    return str(e)
