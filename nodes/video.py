"""Video nodes (ComfyUI V3): VIDEO -> scenes -> sound captions -> STORY_PLAN, and the mux that puts the
story back on the video (stream copy).

Between them runs the ordinary text-to-audio chain (event tokens, sampler, decode). The steps live in ``scenes.py`` and ``audiostory_core``.
"""
from __future__ import annotations

import copy
import uuid
from pathlib import Path

import comfy.model_management as mm
from comfy_api.latest import InputImpl, io, ui

from ..audiostory_core.media.captioning import VisionCaptioner
from ..audiostory_core.models.folders import VLM
from ..audiostory_core.tasks.dubbing import EVENT_CAPTIONS
from ..audiostory_core.errors import InputError
from ..audiostory_core.validation import check_texts
from ..audiostory_core.media.video import SceneList
from . import comfy_models as cm
from . import model_choices
from .common import CATEGORY as BASE_CATEGORY
from .common import Plan, Planner, Scenes, make_hooks, node_perf, pack_temp_dir, reference_input
from .widgets import setting_input
from .layout import audio_from_dict
from .scenes import EXISTING_AUDIO, MUX_POLICIES
from .values import PlanBundle
from .scenes import apply_typed_captions, captions_json, keyframe_batch, plan_for_scenes, scenes_for_video, video_file

CATEGORY = "audio/AudioStory/dubbing"


def _scenes(value) -> SceneList:
    if not isinstance(value, SceneList):
        raise InputError("scenes must come from AudioStoryVideoScenes.")
    return value


class AudioStoryVideoScenes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryVideoScenes",
            display_name="AudioStory Video Scenes",
            category=CATEGORY,
            description="Finds shot boundaries by frame differences (streaming, low frame rate) and splits shots "
                        "longer than one clip. Outputs the scenes, their keyframes and their times.",
            inputs=[
                io.Video.Input("video"),
                Planner.Input("planner", tooltip="Gives the longest clip the DiT renders."),
                setting_input("crossfade", step=0.1,
                              tooltip="The crossfade used later: a scene holds at most one clip minus it."),
                io.Float.Input("threshold", default=0.12, min=0.01, max=1.0, step=0.01,
                               tooltip="Mean grey-level change (0-1) between samples that counts as a cut."),
                io.Float.Input("analysis_fps", default=4.0, min=0.5, max=30.0, step=0.5),
                io.Float.Input("min_scene_seconds", default=1.0, min=0.1, max=10.0, step=0.1,
                               tooltip="Shots shorter than this are merged into a neighbour."),
                io.Int.Input("keyframes", default=1, min=1, max=8, tooltip="Keyframes per scene for the VLM."),
                io.Boolean.Input("allow_vfr", default=False,
                                 tooltip="Accept variable-frame-rate video (timestamps keep it in sync)."),
            ],
            outputs=[
                Scenes.Output("scenes", display_name="scenes"),
                io.Image.Output("keyframes", display_name="keyframes"),
                io.String.Output("scenes_json", display_name="scenes_json"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, video, planner, crossfade, threshold, analysis_fps, min_scene_seconds, keyframes,
                allow_vfr) -> io.NodeOutput:
        sc = scenes_for_video(video_file(video), planner.max_clip_seconds, float(crossfade), threshold=float(threshold),
                              analysis_fps=float(analysis_fps), min_scene_seconds=float(min_scene_seconds),
                              keyframes=int(keyframes), allow_vfr=bool(allow_vfr), hooks=make_hooks(cls.hidden.unique_id))
        text = sc.to_json()
        return io.NodeOutput(sc, keyframe_batch(sc), text, ui=ui.PreviewText(text))


class AudioStoryVideoCaptioner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryVideoCaptioner",
            display_name="AudioStory Video Captioner",
            category=CATEGORY,
            description="Asks a local vision-language model (transformers AutoModelForImageTextToText) for the "
                        "SOUNDS each scene implies. Typed captions (one per line or a JSON list) replace it.",
            inputs=[
                Scenes.Input("scenes"),
                model_choices.combo("vlm", VLM, "The vision-language model (Qwen/Qwen2.5-VL-3B-Instruct)."),
                io.String.Input("brief", default="", multiline=False, tooltip="One line about the video (optional)."),
                io.String.Input("captions", default="", multiline=True,
                                tooltip="Optional: your own captions, one per scene; the VLM is then not used."),
                io.Int.Input("max_new_tokens", default=60, min=8, max=256),
            ],
            outputs=[Scenes.Output("scenes", display_name="scenes"), io.String.Output("captions_json", display_name="captions_json")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, scenes, vlm, brief, captions, max_new_tokens) -> io.NodeOutput:
        check_texts(brief=brief, captions=captions)
        sc = _own_copy(_scenes(scenes))
        if not apply_typed_captions(sc, captions):
            cap = load_captioner(vlm, int(max_new_tokens))
            cap.caption_scenes(sc, brief, overwrite=True, hooks=make_hooks(cls.hidden.unique_id))
        text = captions_json(sc)
        return io.NodeOutput(sc, text, ui=ui.PreviewText(text))


def _own_copy(scenes: SceneList) -> SceneList:
    """A copy whose scenes can be captioned without changing the (cached) input."""
    sc = copy.copy(scenes)
    sc.scenes = [copy.copy(s) for s in sc.scenes]
    return sc


def load_captioner(vlm: str, max_new_tokens: int) -> VisionCaptioner:
    """The VLM, built once and kept between runs under a ModelPatcher, loaded by the memory manager with
    room for the keyframe tokens and the caption."""
    folder = model_choices.resolve(VLM, vlm)
    cap, patcher = cm.cached_aux_model("VLM", (str(folder),),
                                       lambda dev: VisionCaptioner.from_pretrained(folder, device=dev),
                                       lambda c: c.model)
    cap.max_new_tokens = max_new_tokens
    cm.load([patcher], cm.aux_working_memory(cap.model, 2048 + max_new_tokens))
    return cap


class AudioStoryDubbingPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryDubbingPlan",
            display_name="AudioStory Dubbing Plan",
            category=CATEGORY,
            description="Plans the soundtrack from the brief and the timed scene captions (total = video length), "
                        "then forces one event per scene with the scene's length (teacher-forced timestamps, "
                        "re-encoded tokens). The result is an ordinary STORY_PLAN.",
            inputs=[
                Planner.Input("planner"),
                Scenes.Input("scenes"),
                io.String.Input("brief", default="", multiline=True, tooltip="One line about the video (optional)."),
                io.String.Input("captions", default="", multiline=True,
                                tooltip="Optional edited captions (one per scene, or the captioner's JSON)."),
                io.Combo.Input("event_captions", options=list(EVENT_CAPTIONS), default="auto",
                               tooltip="auto: the planner's captions if it wrote one event per scene, else the "
                                       "scene captions; planner: always the planner's; scenes: always the scenes'."),
                setting_input("max_new_tokens"),
                reference_input(),
            ],
            outputs=[Plan.Output("plan", display_name="plan"), io.String.Output("plan_json", display_name="plan_json")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, planner, scenes, brief, captions, event_captions, max_new_tokens,
                reference=False) -> io.NodeOutput:
        check_texts(brief=brief, captions=captions)
        sc = _own_copy(_scenes(scenes))
        pl = planner.planner
        cm.load([planner.llm_patcher, planner.heads_patcher], cm.llm_working_memory(pl.llm, 2048 + int(max_new_tokens)))
        plan = plan_for_scenes(planner.planner, sc, brief, captions, event_captions, int(max_new_tokens),
                               hooks=make_hooks(cls.hidden.unique_id), plan_options=node_perf(reference).plan_kwargs)
        text = plan.to_json()
        return io.NodeOutput(PlanBundle(plan=plan), text, ui=ui.PreviewText(text))


class AudioStoryMuxVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryMuxVideo",
            display_name="AudioStory Mux Audio onto Video",
            category=BASE_CATEGORY,
            description="Puts the audio on a video: the video track is stream-copied (no re-encode, no frame "
                        "decoding), only the audio is encoded (AAC in mp4/mov, Opus in webm/mkv).",
            inputs=[
                io.Video.Input("video"),
                io.Audio.Input("audio"),
                io.Combo.Input("length_policy", options=list(MUX_POLICIES), default="pad",
                               tooltip="pad: audio padded/trimmed to the video length; trim: longer audio is "
                                       "cut to the video; keep_video: audio written as is, video untouched."),
                io.Combo.Input("existing_audio", options=list(EXISTING_AUDIO), default="replace", optional=True,
                               tooltip="replace the video's own audio, or mix it under the new audio."),
                io.Float.Input("mix_gain_db", default=-12.0, min=-60.0, max=12.0, step=0.5, optional=True,
                               tooltip="Gain of the original audio when mixing."),
            ],
            outputs=[io.Video.Output(display_name="video")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, video, audio, length_policy, existing_audio="replace", mix_gain_db=-12.0) -> io.NodeOutput:
        from ..audiostory_core.media.mux import mux_audio_onto_video

        wave, sr = audio_from_dict(audio)
        work = pack_temp_dir()
        src = video_source_file(video, work)
        mm.throw_exception_if_processing_interrupted()
        ext = Path(src).suffix.lower() if Path(src).suffix.lower() in (".mp4", ".mov", ".mkv", ".webm", ".m4v") else ".mkv"
        out = work / f"audiostory_mux_{uuid.uuid4().hex}{ext}"
        mux_audio_onto_video(src, wave, sr, out, policy=length_policy, existing_audio=existing_audio,
                             mix_gain_db=float(mix_gain_db))
        return io.NodeOutput(InputImpl.VideoFromFile(str(out)))


def video_source_file(video, work: Path) -> str:
    """The VIDEO's own file, or a copy of its bytes (or a render of it) in ``work``, for stream copying."""
    work.mkdir(parents=True, exist_ok=True)
    src = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(src, str):
        return src
    tmp_in = work / f"mux_in_{uuid.uuid4().hex}.mp4"
    if src is not None and hasattr(src, "getbuffer"):
        tmp_in.write_bytes(src.getbuffer())
    else:
        video.save_to(str(tmp_in))
    return str(tmp_in)


NODES = [AudioStoryVideoScenes, AudioStoryVideoCaptioner, AudioStoryDubbingPlan, AudioStoryMuxVideo]
