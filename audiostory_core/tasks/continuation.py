"""Audio continuation: understand an input clip, plan what comes next, render it, join it seamlessly.

Understanding follows the official design (reference §1.6, §2.7):
* Whisper encoder features (``transformers``; Whisper-large-v3 by default) of the input resampled to
  16 kHz mono, one 30 s window (the encoder's 1500 frames, padding included, as in training);
* ``whisper_resampler_llava``: ``AdaptiveAvgPool2d((token_num, d))`` over the frames, then
  ``Linear(d -> D)``, GELU, ``Linear(D -> D)`` into the LLM width, weights from the checkpoint;
* the pooled tokens overwrite the input embeddings at placeholder positions of the prompt
  (:class:`plan.PromptContext`).

The official placeholder tokens are undocumented. Default (:class:`PlaceholderLayout`): the SEED-X-style
guess ``<aud> <aud_00000> ... <aud_{token_num-1}> </aud>`` at the start of the user turn, before the
instruction. Every part is configurable.

Checkpoints without trained audio-understanding weights (resampler missing, or still at its
initialisation: zero biases) are reported as such, and the fallback is a text description of the
input (typed by the user or from any audio captioner) placed in the instruction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..stages.audio import crossfade_concat, resample
from ..media.captioning import resolve_model_dir
from ..models.download import fetch_command
from ..errors import InputError, ModelFilesError
from ..models.folders import WHISPER
from ..models.weights import strict_load
from ..shapes import check_loading_info
from ..stages.event_tokens import event_tokens
from ..stages.grammar import build_instruction, encode_prompt
from ..stages.plan import PlanResult, PromptContext, generate_plan
from ..progress import Hooks, as_hooks

WHISPER_SR = 16000
WINDOW_SECONDS = 30.0
DEFAULT_WHISPER = WHISPER.default
RESAMPLER_PREFIX = "seedx.whisper_resampler_llava."
MIN_RATE, MAX_RATE = 8000, 192000
SILENCE_DBFS = -60.0
MODES = ("auto", "whisper", "text")
LONG_INPUT = ("error", "last")


# ---------------------------------------------------------------- resampler
class WhisperResampler(nn.Module):
    """``Whisper_Resampler_llava``: pool the Whisper frames to ``token_num`` tokens, project to the LLM width."""

    def __init__(self, token_num: int, ori_embed_dim: int, tgt_embed_dim: int):
        super().__init__()
        self.token_num, self.ori_embed_dim = token_num, ori_embed_dim
        self.pool = nn.AdaptiveAvgPool2d((token_num, ori_embed_dim))
        self.aud_projector = nn.Sequential(nn.Linear(ori_embed_dim, tgt_embed_dim), nn.GELU(),
                                           nn.Linear(tgt_embed_dim, tgt_embed_dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, T, d] Whisper frames -> [B, token_num, D]."""
        return self.aud_projector(self.pool(feats))


@dataclass
class ResamplerSpec:
    token_num: int
    ori_embed_dim: int
    tgt_embed_dim: int

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Optional["ResamplerSpec"]:
        node = ((raw or {}).get("agent_model") or {}).get("whisper_resampler_llava")
        if not isinstance(node, Mapping):
            return None
        try:
            return cls(int(node["token_num"]), int(node["ori_embed_dim"]), int(node["tgt_embed_dim"]))
        except (KeyError, TypeError, ValueError):
            return None


def resampler_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(RESAMPLER_PREFIX):]: v for k, v in tensors.items() if k.startswith(RESAMPLER_PREFIX)}


def resampler_status(spec: Optional[ResamplerSpec], tensors: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """("trained" | "untrained" | "missing", human-readable reason).

    The official module is initialised with truncated-normal weights and zero biases; a checkpoint whose
    biases are all still exactly zero never trained it.
    """
    if spec is None:
        return "missing", "config.yaml has no agent_model.whisper_resampler_llava"
    state = resampler_state(tensors)
    need = {"aud_projector.0.weight", "aud_projector.0.bias", "aud_projector.2.weight", "aud_projector.2.bias"}
    if not need <= set(state):
        return "missing", f"the checkpoint has no {RESAMPLER_PREFIX}aud_projector weights"
    if all(float(state[k].abs().max()) == 0.0 for k in need if k.endswith("bias")):
        return "untrained", f"{RESAMPLER_PREFIX}aud_projector is still at its initialisation (zero biases)"
    return "trained", "audio-understanding weights found"


def load_resampler(spec: ResamplerSpec, tensors: Mapping[str, torch.Tensor], llm_width: int,
                   dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu") -> WhisperResampler:
    if spec.tgt_embed_dim != llm_width:
        raise ModelFilesError(f"whisper_resampler_llava projects to {spec.tgt_embed_dim} but the LLM is "
                              f"{llm_width} wide; config.yaml and checkpoint do not belong together.")
    mod = WhisperResampler(spec.token_num, spec.ori_embed_dim, spec.tgt_embed_dim)
    strict_load(mod, resampler_state(tensors), f"whisper_resampler_llava weights ({RESAMPLER_PREFIX}*)",
                torch.float32, hint="config.yaml and checkpoint do not belong together.", key_prefix=RESAMPLER_PREFIX)
    return mod.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------- whisper
@dataclass
class WhisperFeatures:
    """A Whisper encoder + its feature extractor (log-mel, 30 s windows)."""

    encoder: Any
    feature_extractor: Any

    @classmethod
    def from_pretrained(cls, name: Union[str, Path] = DEFAULT_WHISPER, search_dirs: Sequence[Union[str, Path]] = (),
                        device: Union[str, torch.device] = "cpu",
                        dtype: torch.dtype = torch.float32) -> "WhisperFeatures":
        from transformers import WhisperFeatureExtractor, WhisperModel

        from ..models.dtypes import dtype_kwarg

        src = resolve_model_dir(name, search_dirs, what="Whisper model", example="openai/whisper-large-v3")
        try:
            fe = WhisperFeatureExtractor.from_pretrained(src)
            model, info = WhisperModel.from_pretrained(src, output_loading_info=True, ignore_mismatched_sizes=True,
                                                       **dtype_kwarg(dtype))
        except (OSError, ValueError, KeyError) as e:
            raise ModelFilesError(
                f"Cannot load the Whisper model '{name}': {e}. It needs config.json, the weights and "
                f"preprocessor_config.json (e.g. `{fetch_command('openai/whisper-large-v3', search_dirs)}`).") from e
        check_loading_info(f"Whisper weights in {src}", info,
                           hint=f"Download the model again (e.g. `{fetch_command('openai/whisper-large-v3', search_dirs)}`).")
        if fe.feature_size != model.config.num_mel_bins:
            raise ModelFilesError(f"Whisper '{name}': the feature extractor makes {fe.feature_size} mel bins but "
                                  f"the encoder expects {model.config.num_mel_bins}.")
        return cls(encoder=model.get_encoder().to(device).eval(), feature_extractor=fe)

    @property
    def width(self) -> int:
        return int(self.encoder.config.d_model)

    @torch.no_grad()
    def __call__(self, mono16k: torch.Tensor) -> torch.Tensor:
        """[S] 16 kHz mono (at most one window) -> [1, frames, d] encoder states (1500 for Whisper)."""
        p = next(self.encoder.parameters())
        feats = self.feature_extractor(mono16k.numpy(), sampling_rate=WHISPER_SR, return_tensors="pt").input_features
        return self.encoder(feats.to(p.device, p.dtype)).last_hidden_state.float()


# ---------------------------------------------------------------- input audio
@dataclass
class InputAudio:
    wave: torch.Tensor              # [C, S] float32 as given (C = 1 or 2)
    sample_rate: int
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.wave.shape[-1] / self.sample_rate


def load_audio_file(path: Union[str, Path]) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any container FFmpeg reads to ([C, S] float32, rate)."""
    import av
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InputError(f"Audio file {p} does not exist.")
    try:
        c = av.open(str(p))
    except Exception as e:
        raise InputError(f"Cannot open {p} as audio ({e}).") from e
    with c:
        if not c.streams.audio:
            raise InputError(f"{p} has no audio stream: there is nothing to continue.")
        st = c.streams.audio[0]
        rate = int(st.codec_context.sample_rate or st.rate or 0)
        chunks = []
        try:
            for fr in c.decode(st):
                a = fr.to_ndarray()
                if not fr.format.is_planar:          # interleaved [1, S*C] -> [C, S]
                    a = a.reshape(-1, len(fr.layout.channels)).T
                if a.dtype.kind == "i":
                    a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
                chunks.append(a.astype(np.float32))
        except av.error.FFmpegError as e:
            raise InputError(f"{p}: the audio stream is corrupt ({e}).") from e
    if not chunks:
        raise InputError(f"{p} has an audio stream with no samples: there is nothing to continue.")
    return torch.from_numpy(np.concatenate(chunks, axis=1)), rate


def check_input_audio(wave: torch.Tensor, sample_rate: int) -> InputAudio:
    """Validate a clip to continue. Mono/stereo at 8-192 kHz are handled; everything else is refused.

    * no samples, or more than 2 channels (AudioStory renders stereo, and there is no standard way to fold
      e.g. 7.1 into the join): error;
    * rates outside 8-192 kHz: error; 8-192 kHz are resampled (16 kHz for Whisper, the output rate for the join);
    * silence (peak below -60 dBFS): error, there is nothing to understand or continue.
    """
    if not isinstance(wave, torch.Tensor):
        raise InputError("The input audio must be a tensor.")
    if wave.dim() == 3:
        if wave.shape[0] != 1:
            raise InputError(f"Give one clip at a time (got a batch of {wave.shape[0]}).")
        wave = wave[0]
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2 or wave.shape[0] == 0 or wave.shape[-1] == 0:
        raise InputError("There is no audio in the input (no samples).")
    c = wave.shape[0]
    if c > 2:
        raise InputError(f"The input has {c} channels; AudioStory continues mono or stereo audio. "
                         "Downmix it first, e.g. `ffmpeg -i in.wav -ac 2 stereo.wav`.")
    sr = int(sample_rate)
    if not MIN_RATE <= sr <= MAX_RATE:
        raise InputError(f"Sample rate {sr} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz.")
    wave = wave.float()
    if not torch.isfinite(wave).all():
        raise InputError("The input audio contains NaN or infinite samples.")
    peak = float(wave.abs().max())
    db = 20 * math.log10(peak) if peak > 0 else -math.inf
    if db < SILENCE_DBFS:
        raise InputError(f"The input audio is silent (peak {db:.1f} dBFS): there is nothing to continue.")
    notes = []
    if sr < 16000:
        notes.append(f"the input is sampled at {sr} Hz (no content above {sr // 2} Hz); the continuation is "
                     "full-band, so the join may be audible")
    if c == 1:
        notes.append("mono input: it is duplicated to stereo in the joined output")
    return InputAudio(wave=wave, sample_rate=sr, notes=notes)


def whisper_window(audio: InputAudio, long_input: str = "error") -> torch.Tensor:
    """16 kHz mono samples of one Whisper window (the last 30 s with ``long_input='last'``)."""
    if long_input not in LONG_INPUT:
        raise InputError(f"long_input must be one of {LONG_INPUT}, got {long_input!r}.")
    if audio.seconds > WINDOW_SECONDS + 1e-6:
        if long_input == "error":
            raise InputError(f"The input lasts {audio.seconds:.1f} s, longer than the {WINDOW_SECONDS:g} s Whisper "
                             "window. Trim it, or use long_input='last' (--long-input last) to understand "
                             "its last 30 s; the whole input is still kept in the output.")
        audio = InputAudio(audio.wave[:, -int(WINDOW_SECONDS * audio.sample_rate):], audio.sample_rate)
    mono = audio.wave.mean(0, keepdim=True)
    return resample(mono, audio.sample_rate, WHISPER_SR)[0]


# ---------------------------------------------------------------- prompt context
@dataclass
class PlaceholderLayout:
    """How the audio tokens sit in the prompt. ``slot`` may contain ``{}`` (formatted with the token index)
    or be one token repeated; ``open``/``close`` may be empty; ``position`` is ``before`` or ``after`` the
    instruction inside the user turn."""

    open: str = "<aud>"
    slot: str = "<aud_{:05d}>"
    close: str = "</aud>"
    position: str = "before"

    def text(self, n: int) -> str:
        slots = "".join(self.slot.format(i) if "{" in self.slot else self.slot for i in range(n))
        return f"{self.open}{slots}{self.close}"

    def slot_tokens(self, n: int) -> list[str]:
        return [self.slot.format(i) if "{" in self.slot else self.slot for i in range(n)]


def placeholder_prompt(tokenizer, instruction: str, n: int, layout: PlaceholderLayout) -> PromptContext:
    """Prompt ids with ``n`` placeholders, and their positions (embeds filled in by the caller)."""
    if layout.position not in ("before", "after"):
        raise InputError("placeholder position must be 'before' or 'after'.")
    ph = layout.text(n)
    segments = [(ph, False), (instruction, True)] if layout.position == "before" else [(instruction, True), (ph, False)]
    ids = encode_prompt(tokenizer, segments)   # placeholders are control tokens, the instruction is user text
    slot_ids = []
    for tok in dict.fromkeys(layout.slot_tokens(n)):
        got = tokenizer.encode(tok, add_special_tokens=False)
        if len(got) != 1:
            raise InputError(f"Placeholder {tok!r} is not a single token of this tokenizer; choose an added token.")
        slot_ids.append(got[0])
    wanted = set(slot_ids)
    positions = [i for i, t in enumerate(ids) if t in wanted]
    if layout.position == "before":
        positions = positions[:n]
    else:
        positions = positions[-n:]
    if len(positions) != n:
        raise InputError(f"Found {len(positions)} placeholder tokens in the prompt, expected {n}.")
    return PromptContext(prompt_ids=ids, positions=positions, embeds=torch.zeros(0))


@dataclass
class AudioContext:
    """What the planner needs from an input clip (the ``AUDIOSTORY_AUDIO_CONTEXT`` object).

    ``context`` is the :class:`PromptContext` for the instruction given at build time (None in text
    mode, or when no instruction was given); :meth:`prompt_context` builds one for any instruction.
    ``instruction_prefix`` goes in front of the user's instruction (the text fallback).
    """

    mode: str                                   # "whisper" or "text"
    instruction_prefix: str = ""
    embeds: Optional[torch.Tensor] = None       # [P, D] pooled audio tokens (whisper mode)
    layout: PlaceholderLayout = field(default_factory=PlaceholderLayout)
    audio: Optional[InputAudio] = None
    notes: list[str] = field(default_factory=list)
    context: Optional[PromptContext] = None
    description: str = ""                       # the instruction the context was bound to
    total_duration: Optional[float] = None
    lead: str = ""

    def prompt_context(self, tokenizer, instruction: str) -> Optional[PromptContext]:
        """PromptContext for the full instruction (``build_instruction(prefix + text, total, lead)``)."""
        if self.embeds is None:
            return None
        pc = placeholder_prompt(tokenizer, instruction, self.embeds.shape[0], self.layout)
        pc.embeds = self.embeds
        return pc

    def bind(self, tokenizer, description: str, total_duration: float, lead: str = "") -> "AudioContext":
        """Fix the instruction (user text without the prefix) and build ``context`` for it."""
        self.description, self.total_duration, self.lead = description, float(total_duration), lead
        full = build_instruction(self.instruction_prefix + description, total_duration, lead)
        self.context = self.prompt_context(tokenizer, full)
        return self


def text_prefix(description: str) -> str:
    d = (description or "").strip().rstrip(".")
    return f"The input audio contains {d}. " if d else ""


def build_audio_context(planner, audio: InputAudio, *, checkpoint_tensors: Optional[Mapping[str, torch.Tensor]] = None,
                        whisper: Optional[WhisperFeatures] = None, description: str = "", mode: str = "auto",
                        long_input: str = "error", layout: Optional[PlaceholderLayout] = None) -> AudioContext:
    """Turn an input clip into an :class:`AudioContext`.

    ``mode``: ``whisper`` needs trained resampler weights and a Whisper model; ``text`` uses only the
    description; ``auto`` uses Whisper when both are available (plus the description if given) and the
    text fallback otherwise.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}.")
    layout = layout or PlaceholderLayout()
    spec = ResamplerSpec.from_config(planner.config.raw)
    status, why = resampler_status(spec, checkpoint_tensors or {}) if checkpoint_tensors is not None \
        else ("missing", "no checkpoint tensors were given")
    notes = list(audio.notes)
    use_whisper = mode == "whisper" or (mode == "auto" and status == "trained" and whisper is not None)
    if mode == "whisper" and status != "trained":
        raise ModelFilesError(f"This checkpoint has no trained audio-understanding weights ({why}), so it cannot "
                              "listen to the input. Describe the input in words instead (text mode / "
                              "--audio-description).")
    if use_whisper and whisper is None:
        raise ModelFilesError("Audio understanding needs a Whisper model (e.g. models/audiostory/whisper-large-v3).")
    if not use_whisper:
        if not description.strip():
            reason = (f"this checkpoint has no trained audio-understanding weights ({why})" if status != "trained"
                      else "no Whisper model was given")
            raise InputError(f"Cannot understand the input audio: {reason}. Describe the input audio in words "
                             "(e.g. 'a coach blows a whistle and a basketball bounces in a gym'); that text goes "
                             "into the instruction.")
        if status != "trained":
            notes.append(f"this checkpoint has no trained audio-understanding weights ({why}); "
                         "the text description of the input is used instead")
        return AudioContext(mode="text", instruction_prefix=text_prefix(description), layout=layout, audio=audio,
                            notes=notes)
    assert spec is not None and checkpoint_tensors is not None
    if whisper.width != spec.ori_embed_dim:
        raise ModelFilesError(f"The Whisper encoder is {whisper.width} wide but whisper_resampler_llava expects "
                              f"{spec.ori_embed_dim} (Whisper-large: 1280). Use the matching Whisper model.")
    llm_width = int(planner.llm.get_input_embeddings().weight.shape[1])
    res = load_resampler(spec, checkpoint_tensors, llm_width, device=planner.device)
    feats = whisper(whisper_window(audio, long_input))
    with torch.no_grad():
        emb = res(feats.to(planner.device))[0]
    return AudioContext(mode="whisper", instruction_prefix=text_prefix(description),
                        embeds=emb.to(planner.dtype), layout=layout, audio=audio, notes=notes)


# ---------------------------------------------------------------- continuation
@dataclass
class Continuation:
    audio: torch.Tensor            # [C, S] output (joined or continuation alone)
    continuation: torch.Tensor     # [C, S] the generated part alone
    sample_rate: int
    plan_result: PlanResult
    joined: bool
    problems: list[str] = field(default_factory=list)


def join(input_audio: InputAudio, story: torch.Tensor, sample_rate: int, crossfade: float,
         crossfade_curve: str = "linear") -> torch.Tensor:
    """Input (resampled, channels matched) followed by the story, with the stories' crossfade."""
    x = resample(input_audio.wave, input_audio.sample_rate, sample_rate)
    if x.shape[0] != story.shape[0]:
        x = x.expand(story.shape[0], -1) if x.shape[0] == 1 else x.mean(0, keepdim=True).expand(story.shape[0], -1)
    return crossfade_concat([x.contiguous(), story], sample_rate, crossfade, crossfade_curve)


def continue_audio(pipe, ctx: AudioContext, instruction: str, duration: float, *, output: str = "joined",
                   lead: str = "", max_new_tokens: Optional[int] = None, crossfade: float = 3.0,
                   steps: int = 50, guidance: float = 4.0, noise: str = "seeded", seed: int = 0,
                   sampler: str = "euler", sample_rate: int = 32000, crossfade_curve: str = "linear",
                   hooks: Optional[Hooks] = None) -> Continuation:
    """Plan and render ``duration`` seconds that follow the input; ``output`` = joined | continuation."""
    hooks = as_hooks(hooks)
    if output not in ("joined", "continuation"):
        raise InputError("output must be 'joined' or 'continuation'.")
    if output == "joined" and ctx.audio is None:
        raise InputError("The audio context carries no input audio to join.")
    planner = pipe.models.planner
    description = ctx.instruction_prefix + instruction
    pc = ctx.prompt_context(planner.tokenizer, build_instruction(description, duration, lead))
    res = generate_plan(planner, description, duration, lead=lead, max_new_tokens=max_new_tokens,
                        context=pc, hooks=hooks, **pipe.perf.plan_kwargs)
    if not res.plan.events:
        from ..errors import PlanError

        raise PlanError("The planner wrote no usable event. " + "; ".join(res.plan.problems))
    problems = list(ctx.notes) + list(res.plan.problems) + pipe.check_durations(res.plan.durations, crossfade)
    toks = event_tokens(planner, res.plan, res, hooks, context=pc)
    lat = pipe.sample(toks, crossfade=crossfade, steps=steps, guidance=guidance, noise=noise, seed=seed,
                      sampler=sampler, hooks=hooks)
    story, _, sr = pipe.decode(lat, res.plan.durations, crossfade=crossfade, sample_rate=sample_rate,
                               crossfade_curve=crossfade_curve, hooks=hooks)
    if output == "joined":
        n = int(crossfade * sr)
        if ctx.audio.wave.shape[-1] * sr / ctx.audio.sample_rate < n:
            problems.append(f"the input is shorter than the {crossfade:g} s crossfade; it is joined without overlap")
        out = join(ctx.audio, story, sr, crossfade, crossfade_curve)
    else:
        out = story
    return Continuation(audio=out, continuation=story, sample_rate=sr, plan_result=res,
                        joined=output == "joined", problems=problems)
