"""The text-to-long-audio pipeline as composable stages: plan -> event tokens -> sample -> decode."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from .stages.audio import crossfade_concat, decode_clips, resample
from .models.config import VAE_SAMPLE_RATE, ModelPaths, locate, max_clip_seconds
from .errors import InputError, PlanError
from .stages.event_tokens import EventTokens, clip_seconds, event_tokens
from .stages.fast_vae import decode_clips_fast
from .models.loading import AudioStoryModels, load_models
from .perf import PerfOptions
from .stages.plan import PlanResult, StoryPlan, generate_plan
from .progress import Hooks, as_hooks
from .stages.sampling import sample_latents
from .validation import (check_device, check_finite, check_instruction, check_plan_events, check_render_args,
                         check_setting, check_total_duration, check_transcript_ids, clip_problems, total_mismatch)

LOW_VRAM_CHUNK_FRAMES = 128   # latent frames per VAE window in low-VRAM mode (~6 s of audio)
REFERENCE_SAMPLE_RATE = 32000


TOKENS_CAUSE = "LLM or bridge-head weights that are not finite, or fp16 overflow (try --dtype fp32 or bf16)"
AUDIO_CAUSE = "VAE weights that are not finite or latents out of range (with fp16, try --dtype fp32 or bf16)"


def resolve_device(device: Optional[str]) -> torch.device:
    """``auto`` -> cuda if available, else cpu; a name that is not usable here is an :class:`InputError`."""
    return check_device(device)


def resolve_dtype(dtype: Optional[str], device: torch.device) -> torch.dtype:
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32  # official runs fp16 on GPU
    if dtype not in names:
        raise InputError(f"dtype must be one of auto, fp32, fp16, bf16; got {dtype!r}")
    return names[dtype]


@dataclass
class StoryAudio:
    plan: StoryPlan
    tokens: EventTokens
    latents: torch.Tensor          # [E, T, 64] before the VAE
    audio: torch.Tensor            # [C, S] the whole story
    clips: list[torch.Tensor]      # per event, trimmed and resampled
    sample_rate: int
    problems: list[str] = field(default_factory=list)


class AudioStoryPipeline:
    """Holds the loaded models and runs the stages. Every stage takes optional :class:`Hooks`.

    ``perf`` (:class:`PerfOptions`, default: every fast path; CUDA-only ones on CUDA) selects the speed
    paths; ``reference=True`` is the official computation (``PerfOptions.reference()``).
    ``low_vram`` keeps only the component of the running stage on ``device`` (the LLM is offloaded
    to ``offload_device`` before sampling, the DiT before decoding) and decodes the VAE in time
    chunks; the output is unchanged.
    """

    def __init__(self, models: AudioStoryModels, *, perf: Optional[PerfOptions] = None, reference: bool = False,
                 low_vram: bool = False, device: Optional[Union[str, torch.device]] = None,
                 offload_device: str = "cpu"):
        self.models = models
        if reference and perf is not None and not perf.is_reference:
            raise InputError("reference=True is the official computation; pass either reference=True or perf, "
                             "not both.")
        self.perf = PerfOptions.reference() if reference else (perf if perf is not None else PerfOptions())
        self.low_vram = bool(low_vram)
        self.offload_device = torch.device(offload_device)
        if device is not None:
            self.device = torch.device(device)
        elif models.planner is not None:
            self.device = models.planner.device
        elif models.dit is not None:
            self.device = models.dit.device
        else:
            self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(cls, root: Union[str, Path, ModelPaths], device: Optional[str] = None,
                        dtype: Optional[str] = None, *, perf: Optional[PerfOptions] = None, reference: bool = False,
                        low_vram: bool = False, planner: bool = True, dit: bool = True, vae: bool = True,
                        strict: bool = False, **overrides) -> "AudioStoryPipeline":
        """Locate (unless ``root`` is already a :class:`ModelPaths`) and load the requested components.

        ``planner``/``dit``/``vae`` skip what a command does not need (``plan`` loads no DiT or VAE);
        ``strict`` makes checkpoint keys that belong to no module an error (else ``models.warnings``);
        ``reference=True`` is the official computation (``PerfOptions.reference()``)."""
        dev = resolve_device(device)
        paths = root if isinstance(root, ModelPaths) else locate(root, **overrides)
        # Low-VRAM: load on the host and bring each component to the device only for its stage.
        load_dev = torch.device("cpu") if low_vram else dev
        models = load_models(paths, resolve_dtype(dtype, dev), load_dev, planner=planner, dit=dit, vae=vae,
                             strict=strict)
        return cls(models, perf=perf, reference=reference, low_vram=low_vram, device=dev)

    # ------------------------------------------------------------ placement (low-VRAM mode)
    def _place(self, stage: str) -> None:
        """Put the component(s) ``stage`` needs on the device and the others on the offload device."""
        if not self.low_vram:
            return
        m = self.models
        want = {"plan": ("llm", "heads"), "tokens": ("llm", "heads"), "sample": ("dit",), "decode": ("vae",)}[stage]
        parts = {"llm": m.planner.llm if m.planner is not None else None,
                 "heads": m.planner.heads if m.planner is not None else None, "dit": m.dit, "vae": m.vae}
        for name, mod in parts.items():   # offload first so the peak never holds both
            if mod is not None and name not in want and name != "heads":
                mod.to(self.offload_device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for name in want:
            if parts[name] is not None:
                parts[name].to(self.device)
        if stage == "sample" and m.null_embedding is not None:
            m.null_embedding = m.null_embedding.to(self.device)

    # ------------------------------------------------------------ limits
    @property
    def max_clip_seconds(self) -> float:
        """Longest clip the DiT renders (:func:`models.config.max_clip_seconds`)."""
        sr = int(self.models.vae.config.sampling_rate) if self.models.vae is not None else VAE_SAMPLE_RATE
        return max_clip_seconds(self.models.flux_config.audio_seq_len, sr)

    def check_durations(self, durations: list[float], crossfade: float) -> list[str]:
        """Clip-length rules shared by every path (:func:`validation.clip_problems`): a clip longer than
        the DiT window is a :class:`PlanError` (the official code cuts it silently); warnings are returned."""
        return clip_problems(durations, crossfade, self.max_clip_seconds)

    def _vocab_size(self) -> int:
        return int(self.models.planner.llm.get_input_embeddings().num_embeddings)

    def check_plan(self, plan: StoryPlan, crossfade: float) -> list[str]:
        """Limits of every plan, generated or hand-written: events, captions, durations, ids, clip lengths."""
        if not plan.events:
            raise PlanError("The plan has no usable event. " + "; ".join(plan.problems))
        check_plan_events([e.caption for e in plan.events], plan.durations, allow_empty_captions=True)
        if self.models.planner is not None:
            check_transcript_ids(plan.transcript_ids, self._vocab_size())
        return self.check_durations(plan.durations, crossfade)

    # ------------------------------------------------------------ stages
    def plan(self, description: str, total_duration: float, max_new_tokens: Optional[int] = None,
             lead: str = "", hooks: Optional[Hooks] = None) -> PlanResult:
        self._place("plan")
        return generate_plan(self.models.planner, description, total_duration, lead=lead,
                             max_new_tokens=max_new_tokens, hooks=hooks, **self.perf.plan_kwargs)

    def tokens(self, plan: Union[StoryPlan, PlanResult], hooks: Optional[Hooks] = None) -> EventTokens:
        self._place("tokens")
        story = plan.plan if isinstance(plan, PlanResult) else plan
        check_transcript_ids(story.transcript_ids, self._vocab_size())
        toks = event_tokens(self.models.planner, story, plan if isinstance(plan, PlanResult) else None, hooks)
        check_finite(toks.fused, "event-token stage (fused conditioning)", TOKENS_CAUSE)
        return toks

    def sample(self, tokens: EventTokens, *, crossfade: float = 3.0, steps: int = 50, guidance: float = 4.0,
               noise: str = "seeded", seed: int = 0, sampler: str = "euler",
               hooks: Optional[Hooks] = None, previous_latents: Optional[torch.Tensor] = None,
               render_events: Optional[list[int]] = None) -> torch.Tensor:
        """All events, or (re-roll) only ``render_events`` with the others copied from ``previous_latents``."""
        for name, value in dict(crossfade=crossfade, steps=steps, guidance=guidance, noise=noise, seed=seed,
                                sampler=sampler).items():
            check_setting(name, value)      # the library's edge: sample_latents trusts its settings
        self._place("sample")
        return sample_latents(self.models.dit, tokens.fused, self.models.null_embedding,
                              clip_seconds(tokens.durations, crossfade), steps=steps, guidance=guidance,
                              noise=noise, seed=seed, sampler=sampler, hooks=hooks,
                              compile=self.perf.compile_dit, attention_backend=self.perf.attention_backend,
                              previous_latents=previous_latents, render_events=render_events)

    def decode(self, latents: torch.Tensor, durations: list[float], *, crossfade: float = 3.0,
               sample_rate: int = REFERENCE_SAMPLE_RATE, crossfade_curve: str = "linear",
               hooks: Optional[Hooks] = None) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        for name, value in dict(sample_rate=sample_rate, crossfade=crossfade,
                                crossfade_curve=crossfade_curve).items():
            check_setting(name, value)      # sample rate 0/None = the VAE's own rate; crossfade_concat trusts these
        vae = self.models.vae
        sr_vae = int(vae.config.sampling_rate)
        sr = sr_vae if sample_rate in (None, 0) else int(sample_rate)
        self._place("decode")
        perf = self.perf
        secs = clip_seconds(durations, crossfade)
        if self.low_vram:
            clips = decode_clips_fast(vae, latents, secs, hooks, batch=1, trim=perf.vae_trim,
                                      chunk_frames=perf.vae_chunk_frames or LOW_VRAM_CHUNK_FRAMES,
                                      overlap=perf.vae_overlap_frames)
        elif not perf.reference_vae:
            clips = decode_clips_fast(vae, latents, secs, hooks, batch=perf.vae_batch, trim=perf.vae_trim,
                                      chunk_frames=perf.vae_chunk_frames, overlap=perf.vae_overlap_frames)
        else:
            clips = decode_clips(vae, latents, secs, hooks)
        clips = [resample(c, sr_vae, sr) for c in clips]
        story = crossfade_concat(clips, sr, crossfade, crossfade_curve)
        check_finite(story, "decode stage (VAE audio)", AUDIO_CAUSE)
        return story, clips, sr

    def generate(self, description: str = "", total_duration: float = 0.0, *, plan: Optional[StoryPlan] = None,
                 steps: int = 50, guidance: float = 4.0, seed: int = 0, noise: str = "seeded",
                 sampler: str = "euler", sample_rate: int = REFERENCE_SAMPLE_RATE, crossfade: float = 3.0,
                 crossfade_curve: str = "linear", max_new_tokens: Optional[int] = None, lead: str = "",
                 hooks: Optional[Hooks] = None) -> StoryAudio:
        """Plan (unless ``plan`` is given), then render. Every argument is checked before any work; a
        generated plan obeys the same limits as a given one; ``problems`` lists the warnings, including a
        plan total that differs from ``total_duration`` (or the plan's own) by more than the crossfade."""
        hooks = as_hooks(hooks)
        check_render_args(steps=steps, guidance=guidance, seed=seed, sample_rate=sample_rate, crossfade=crossfade,
                          noise=noise, sampler=sampler, crossfade_curve=crossfade_curve)
        if plan is None:
            check_instruction(description)
            check_total_duration(total_duration)
            result = self.plan(description, total_duration, max_new_tokens, lead, hooks)
            story = result.plan
            source: Union[StoryPlan, PlanResult] = result
        else:
            story = plan
            source = plan
        problems = list(story.problems) + self.check_plan(story, crossfade)
        problems += total_mismatch(story.durations, total_duration or story.total_duration, crossfade)
        toks = self.tokens(source, hooks)
        lat = self.sample(toks, crossfade=crossfade, steps=steps, guidance=guidance, noise=noise, seed=seed,
                          sampler=sampler, hooks=hooks)
        audio, clips, sr = self.decode(lat, story.durations, crossfade=crossfade, sample_rate=sample_rate,
                                       crossfade_curve=crossfade_curve, hooks=hooks)
        return StoryAudio(plan=story, tokens=toks, latents=lat, audio=audio, clips=clips, sample_rate=sr,
                          problems=problems)
