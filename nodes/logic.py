"""Node logic that needs no ComfyUI: value objects passed between nodes, validation, layout
conversions, file-name rules. The node modules are the thin ComfyUI layer over this and over
``audiostory_core``; everything here is unit-tested without a ComfyUI install.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

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
MAX_TOTAL_SECONDS = 600.0


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
            "Flux_detokenizer/, Qwen2.5-3B-Instruct/ and flan-t5-large/; "
            "`python -m audiostory_core download --models models/audiostory/AudioStory` fetches them.")


def dtype_from_choice(choice: str) -> Optional[torch.dtype]:
    """None for 'auto' (the host decides per component)."""
    table = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if choice not in table:
        raise InputError(f"dtype must be one of {DTYPE_CHOICES}, got {choice!r}")
    return table[choice]


# ---------------------------------------------------------------- validation
def validate_plan_inputs(instruction: Any, total_duration: Any, max_new_tokens: Any) -> Optional[str]:
    """A ComfyUI-style validation message, or None when valid (None inputs are links: not checked)."""
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        return "The instruction is empty: describe the story, e.g. 'A fire truck leaves the station with sirens blaring.'"
    if total_duration is not None:
        try:
            d = float(total_duration)
        except (TypeError, ValueError):
            return f"total_duration must be a number of seconds, got {total_duration!r}"
        if not (d > 0) or d > MAX_TOTAL_SECONDS or math.isnan(d):
            return f"total_duration must be in (0, {MAX_TOTAL_SECONDS:g}] seconds, got {d:g}"
    if max_new_tokens is not None and int(max_new_tokens) < 16:
        return f"max_new_tokens must be at least 16, got {max_new_tokens}"
    return None


def parse_plan_json(text: Any, max_event_seconds: Optional[float] = None) -> StoryPlan:
    if not isinstance(text, str) or not text.strip():
        raise PlanError("The plan JSON is empty. Paste the JSON shown by AudioStoryPlanner (or write "
                        '{"instruction": "...", "reasoning": "...", "events": [{"caption": "...", "duration": 4.0}]}).')
    return StoryPlan.from_json(text, max_event_seconds=max_event_seconds)


def check_clip_lengths(durations: Sequence[float], crossfade: float, max_clip_seconds: float) -> None:
    """Raise a clear error when an event (+ crossfade tail) does not fit in one DiT clip."""
    if crossfade < 0 or math.isnan(crossfade):
        raise InputError(f"crossfade must be >= 0 s, got {crossfade}")
    bad = [(i + 1, s) for i, s in enumerate(clip_seconds(list(durations), crossfade)) if s > max_clip_seconds + 1e-6]
    if bad:
        desc = "; ".join(f"event {i}: {s:.2f} s" for i, s in bad)
        raise PlanError(f"{desc} (duration + {crossfade:g} s crossfade tail) longer than one clip can hold "
                        f"({max_clip_seconds:.2f} s for this model). Shorten or split those events in the plan, "
                        "or lower the crossfade.")


def describe_plan(plan: StoryPlan) -> str:
    head = plan.text()
    if plan.problems:
        head += "\n\nwarnings:\n" + "\n".join(f"- {p}" for p in plan.problems)
    return head


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


# ---------------------------------------------------------------- progress / text streaming
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
