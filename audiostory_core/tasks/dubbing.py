"""Video dubbing: scenes + sound captions -> an ordinary AudioStory plan with forced durations -> soundtrack.

Why it works this way:
* The planner sees the brief plus the timed scene captions, with the total set to the video length,
  and writes its reasoning and events as usual (reference prompt, greedy decoding).
* Event durations must follow the cuts, whatever the LLM wrote. So the plan is *edited*: one event per
  scene, duration = scene length, caption = the planner's caption for that moment (or the scene caption).
  Editing drops the generated spans, so the timestamp text is teacher-forced (``render_caption``) and
  the query states are re-encoded (:func:`event_tokens.event_tokens`). The result is a normal
  ``audiostory-plan/1`` that ``generate --plan`` can render again.
* The rendered story is trimmed or padded to exactly the video length before muxing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import InputError, PlanError
from ..stages.event_tokens import event_tokens
from ..stages.plan import StoryEvent, StoryPlan, generate_plan
from ..progress import Hooks, as_hooks
from ..media.video import SceneList

DEFAULT_BRIEF = "Create the soundtrack of this video: sound effects and ambience that follow the picture."
EVENT_CAPTIONS = ("auto", "planner", "scenes")


def max_scene_seconds(max_clip_seconds: float, crossfade: float) -> float:
    """Longest scene one event can hold: a non-last clip is rendered ``crossfade`` seconds longer."""
    m = max_clip_seconds - max(0.0, crossfade)
    if m <= 0.5:
        raise InputError(f"The crossfade ({crossfade} s) leaves no room in a {max_clip_seconds:.2f} s clip.")
    return m


def instruction_total(total: float) -> float:
    """Total written in the instruction: the video length to 0.01 s (the grammar's precision)."""
    return round(float(total), 2)


def describe_scenes(brief: str, scenes: SceneList) -> str:
    """The user part of the instruction: the brief, then every scene with its time span and caption."""
    brief = (brief or "").strip() or DEFAULT_BRIEF
    if not brief.endswith((".", "!", "?")):
        brief += "."
    parts = []
    for s in scenes.scenes:
        cap = s.caption.strip().rstrip(".") or "no caption"
        parts.append(f"{s.start:.2f}-{s.end:.2f} s: {cap}")
    return f"{brief} The video has {len(parts)} scenes. " + "; ".join(parts) + "."


def _planner_caption_at(events: Sequence[StoryEvent], t: float, total: float) -> Optional[str]:
    """Caption of the generated event playing at time ``t`` once its timeline is scaled to ``total``."""
    durs = [max(0.0, e.duration) for e in events]
    s = sum(durs)
    if not events or s <= 0:
        return None
    acc = 0.0
    for e, d in zip(events, durs):
        acc += d * total / s
        if t < acc:
            return e.caption
    return events[-1].caption


def force_scene_events(generated: StoryPlan, scenes: SceneList, event_captions: str = "auto") -> StoryPlan:
    """Edit a generated plan so it has exactly one event per scene with the scene's length.

    ``event_captions``: ``planner`` takes the planner's caption playing at each scene's middle,
    ``scenes`` takes the scene captions verbatim, ``auto`` uses the planner's captions when it wrote
    one event per scene and the scene captions otherwise.
    """
    if event_captions not in EVENT_CAPTIONS:
        raise InputError(f"event_captions must be one of {EVENT_CAPTIONS}, got {event_captions!r}.")
    total = scenes.duration
    notes = []
    use_planner = event_captions == "planner" or (event_captions == "auto"
                                                  and len(generated.events) == len(scenes.scenes))
    if use_planner and not generated.events:
        use_planner = False
        notes.append("the planner wrote no usable event; the scene captions were used")
    elif event_captions == "auto" and not use_planner:
        notes.append(f"the planner wrote {len(generated.events)} events for {len(scenes.scenes)} scenes; "
                     "the scene captions were used")
    events = []
    for i, sc in enumerate(scenes.scenes):
        cap = None
        if use_planner:
            cap = (generated.events[i].caption if len(generated.events) == len(scenes.scenes)
                   else _planner_caption_at(generated.events, (sc.start + sc.end) / 2, total))
        cap = (cap or sc.caption or "").strip()
        if not cap:
            raise PlanError(f"Scene {i + 1} has no caption; caption the scenes or type the captions.")
        events.append(StoryEvent(caption=cap, duration=float(sc.duration)))
    return StoryPlan(instruction=generated.instruction, reasoning=generated.reasoning, events=events,
                     total_duration=generated.total_duration, transcript_ids=list(generated.transcript_ids),
                     problems=list(generated.problems) + notes)


@dataclass
class DubbingPlan:
    plan: StoryPlan
    description: str           # the user part of the instruction (before the total sentence)
    generated_events: int      # how many events the planner wrote before forcing


def dubbing_plan(planner, scenes: SceneList, brief: str = "", *, event_captions: str = "auto",
                 lead: str = "", max_new_tokens: Optional[int] = None,
                 hooks: Optional[Hooks] = None, plan_options: Optional[dict] = None) -> DubbingPlan:
    """Plan the soundtrack of ``scenes``: generate with the reference prompt, then force the scene timing.

    ``plan_options``: the decode speed paths (``PerfOptions.plan_kwargs``); None = the reference loop."""
    if not scenes.scenes:
        raise InputError("The video has no scene.")
    missing = [i + 1 for i, s in enumerate(scenes.scenes) if not s.caption.strip()]
    if missing and event_captions != "planner":
        raise InputError(f"Scene(s) {missing} have no caption. Caption them with a VLM or type the captions.")
    description = describe_scenes(brief, scenes)
    total = instruction_total(scenes.duration)
    res = generate_plan(planner, description, total, lead=lead, max_new_tokens=max_new_tokens,
                        keep_hidden=False, hooks=hooks, **(plan_options or {}))
    plan = force_scene_events(res.plan, scenes, event_captions)
    plan.total_duration = scenes.duration
    return DubbingPlan(plan=plan, description=description, generated_events=len(res.plan.events))


def fit_length(audio: torch.Tensor, samples: int) -> torch.Tensor:
    """Trim or zero-pad [C, S] audio to exactly ``samples``."""
    if audio.shape[-1] >= samples:
        return audio[..., :samples].contiguous()
    return torch.nn.functional.pad(audio, (0, samples - audio.shape[-1]))


def check_plan_fits(plan: StoryPlan, scenes: SceneList, max_clip_seconds: float, crossfade: float) -> None:
    """The plan must tile the video and every event must fit in one clip."""
    tol = 1e-3 + 1.0 / max(scenes.info.frame_rate, 1.0)
    if abs(sum(plan.durations) - scenes.duration) > tol:
        raise PlanError(f"The plan lasts {sum(plan.durations):.3f} s but the video {scenes.duration:.3f} s; "
                        "event durations must add up to the video length.")
    lim = max_scene_seconds(max_clip_seconds, crossfade)
    long = [i + 1 for i, d in enumerate(plan.durations[:-1]) if d > lim + 1e-6]
    if long:
        raise PlanError(f"Events {long} are longer than one clip can hold ({lim:.2f} s with the "
                        f"{crossfade:g} s crossfade). Split those scenes.")


@dataclass
class Soundtrack:
    audio: torch.Tensor        # [C, S], exactly the video length
    sample_rate: int
    crossfade: float
    problems: list[str] = field(default_factory=list)
    clips: list[torch.Tensor] = field(default_factory=list)   # per event, before the crossfade (for stems)


def render_soundtrack(pipe, plan: StoryPlan, video_seconds: float, *, crossfade: float = 3.0,
                      steps: int = 50, guidance: float = 4.0, noise: str = "seeded", seed: int = 0,
                      sampler: str = "euler", sample_rate: int = 32000, crossfade_curve: str = "linear",
                      hooks: Optional[Hooks] = None) -> Soundtrack:
    """Teacher-force and render the plan with the usual stages; the result lasts exactly the video."""
    hooks = as_hooks(hooks)
    problems = []
    cf = crossfade
    if plan.events and plan.durations[-1] < crossfade:
        # a last clip shorter than the crossfade would be joined without overlap and shift the end
        cf = plan.durations[-1]
        problems.append(f"the last scene ({cf:.2f} s) is shorter than the {crossfade:g} s crossfade; "
                        f"a {cf:.2f} s crossfade was used")
    problems += pipe.check_durations(plan.durations, cf)
    toks = event_tokens(pipe.models.planner, plan, None, hooks)
    lat = pipe.sample(toks, crossfade=cf, steps=steps, guidance=guidance, noise=noise, seed=seed,
                      sampler=sampler, hooks=hooks)
    audio, clips, sr = pipe.decode(lat, plan.durations, crossfade=cf, sample_rate=sample_rate,
                                   crossfade_curve=crossfade_curve, hooks=hooks)
    return Soundtrack(audio=fit_length(audio, int(round(video_seconds * sr))), sample_rate=sr, crossfade=cf,
                      problems=problems, clips=clips)


@dataclass
class DubResult:
    path: Path
    plan: StoryPlan
    scenes: SceneList
    soundtrack: Soundtrack


def dub_video(pipe, video: Union[str, Path], out: Union[str, Path], scenes: SceneList, *, brief: str = "",
              plan: Optional[StoryPlan] = None, event_captions: str = "auto", lead: str = "",
              max_new_tokens: Optional[int] = None, crossfade: float = 3.0, steps: int = 50,
              guidance: float = 4.0, noise: str = "seeded", seed: int = 0, sampler: str = "euler",
              sample_rate: int = 32000, crossfade_curve: str = "linear", existing_audio: str = "replace",
              mix_gain_db: float = -12.0, audio_codec: Optional[str] = None,
              hooks: Optional[Hooks] = None) -> DubResult:
    """Plan (unless ``plan`` is given), render and mux. ``out`` is written atomically, at the very end."""
    from ..media.mux import mux_audio_onto_video

    if existing_audio not in ("replace", "mix"):
        raise InputError(f"existing_audio must be 'replace' or 'mix', got {existing_audio!r}.")
    if Path(out).resolve() == Path(video).resolve():
        raise InputError("The output must not overwrite the input video.")
    if plan is None:
        plan = dubbing_plan(pipe.models.planner, scenes, brief, event_captions=event_captions, lead=lead,
                            max_new_tokens=max_new_tokens, hooks=hooks, plan_options=pipe.perf.plan_kwargs).plan
    check_plan_fits(plan, scenes, pipe.max_clip_seconds, crossfade)
    track = render_soundtrack(pipe, plan, scenes.duration, crossfade=crossfade, steps=steps, guidance=guidance,
                              noise=noise, seed=seed, sampler=sampler, sample_rate=sample_rate,
                              crossfade_curve=crossfade_curve, hooks=hooks)
    path = mux_audio_onto_video(video, track.audio, track.sample_rate, out, policy="pad",
                                audio_codec=audio_codec, existing_audio=existing_audio, mix_gain_db=mix_gain_db)
    return DubResult(path=Path(path), plan=plan, scenes=scenes, soundtrack=track)

