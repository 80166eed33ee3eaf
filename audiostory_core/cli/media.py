"""CLI subcommands ``dub`` (video -> video with a generated soundtrack) and ``continue`` (audio -> longer audio).

Kept apart from ``main.py`` so the text-to-audio CLI stays small; ``main.py`` registers these.
Order of work in ``dub``: scenes, then captions (the VLM is freed before AudioStory loads), then plan,
render and mux; every output file is written atomically at the end.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

from ..models.folders import VLM, WHISPER
from .common import (add_decode_args, add_render_args, add_stems_arg, check_args, clip_window, lead, pipeline, read_plan,
                     settings, tqdm_hooks, write_result_stems)


def add_parsers(sub, add_model_args) -> None:
    d = sub.add_parser("dub", help="video -> the same video with a generated soundtrack")
    add_model_args(d)
    d.add_argument("--video", required=True, help="input video (MP4, MOV, MKV, WebM, ...)")
    d.add_argument("--out", required=True, help="output .mp4/.mov (AAC) or .mkv/.webm (Opus)")
    d.add_argument("--brief", default="", help="one line about the video, e.g. 'a cartoon chase in a kitchen'")
    d.add_argument("--captions", help="captions file: JSON list, scenes JSON, or one caption per line")
    d.add_argument("--scenes", help="scenes JSON (start/end/caption) written by --scenes-out and edited")
    d.add_argument("--scenes-out", help="write the scenes with their captions here (JSON, editable)")
    d.add_argument("--captions-only", action="store_true", help="stop after writing --scenes-out")
    d.add_argument("--plan", help="render this plan JSON (e.g. an edited --plan-out) instead of planning")
    d.add_argument("--plan-out", help="write the forced plan here (an ordinary AudioStory plan JSON)")
    d.add_argument("--vlm", default=VLM.default, help="VLM folder or Hugging Face id")
    d.add_argument("--keyframes", type=int, default=1, help="keyframes per scene given to the VLM")
    d.add_argument("--threshold", type=float, default=0.12, help="cut threshold (mean grey change, 0-1)")
    d.add_argument("--analysis-fps", type=float, default=4.0)
    d.add_argument("--min-scene", type=float, default=1.0, help="merge shots shorter than this (s)")
    d.add_argument("--allow-vfr", action="store_true", help="accept variable-frame-rate video")
    d.add_argument("--event-captions", choices=["auto", "planner", "scenes"], default="auto")
    d.add_argument("--existing-audio", choices=["replace", "mix"], default="replace")
    d.add_argument("--mix-gain-db", type=float, default=-12.0, help="gain of the original audio when mixing")
    d.add_argument("--audio-codec", help="override: aac, libopus, ...")
    add_render_args(d)
    add_decode_args(d)
    add_stems_arg(d, "the video's")

    c = sub.add_parser("continue", help="audio clip + instruction -> the clip followed by its continuation")
    add_model_args(c)
    c.add_argument("--audio", required=True, help="input clip (any format FFmpeg reads), mono or stereo, <= 30 s")
    c.add_argument("--instruction", required=True, help="what comes next, e.g. 'the coach gives basketball lessons'")
    c.add_argument("--duration", type=float, required=True, help="length of the continuation (s)")
    c.add_argument("--out", required=True, help="output .wav or .flac")
    c.add_argument("--output", choices=["joined", "continuation"], default="joined")
    c.add_argument("--understanding", choices=["auto", "whisper", "text"], default="auto")
    c.add_argument("--whisper", default=WHISPER.default, help="Whisper folder or Hugging Face id")
    c.add_argument("--audio-description", default="", help="words describing the input (text fallback)")
    c.add_argument("--long-input", choices=["error", "last"], default="error",
                   help="input longer than 30 s: refuse, or understand its last 30 s")
    c.add_argument("--placeholder", default="<aud>,<aud_{:05d}>,</aud>",
                   help="open,slot,close tokens of the audio placeholders (slot may contain {:05d})")
    c.add_argument("--plan-out", help="also write the plan JSON here")
    add_render_args(c)
    add_decode_args(c)


def model_search_dirs(args) -> list[Path]:
    """Where a model named by a folder name is looked for: the model root and the folder above it."""
    root = Path(args.models).expanduser()
    return [root, root.parent]


def _scenes(args, max_scene: float):
    from ..media.captioning import apply_captions, parse_captions
    from ..media.video import check_frame_rate, detect_scenes, probe_video, scenes_from_dict
    from ..validation import MAX_INSTRUCTION_CHARS, parse_json, read_text_file

    if args.scenes:
        info = probe_video(args.video)
        check_frame_rate(info, args.allow_vfr)
        data = parse_json(read_text_file(args.scenes, "--scenes"), f"--scenes {args.scenes}")
        return scenes_from_dict(data, info, max_scene), True
    sc = detect_scenes(args.video, max_scene_seconds=max_scene, threshold=args.threshold,
                       analysis_fps=args.analysis_fps, min_scene_seconds=args.min_scene,
                       keyframes=args.keyframes, allow_vfr=args.allow_vfr)
    if args.captions:
        text = read_text_file(args.captions, "--captions", MAX_INSTRUCTION_CHARS)
        apply_captions(sc, parse_captions(text, len(sc.scenes)))
        return sc, True
    return sc, False


def check_dub_args(args):
    """Arguments, input and output files of ``dub`` before any video is read or model loaded; the plan."""
    from ..media.mux import FORMATS
    from ..validation import check_input_file, check_output_file

    check_args(args)
    check_input_file(args.video, "--video")
    inputs = [args.video, args.scenes, args.captions, args.plan]
    check_output_file(args.out, formats=[f.lstrip(".") for f in FORMATS], inputs=inputs, what="--out")
    for name in ("scenes_out", "plan_out"):
        if getattr(args, name):
            check_output_file(getattr(args, name), inputs=inputs + [args.out], what="--" + name.replace("_", "-"))
    if args.stems:
        from ..tasks.stems import CUE_FILES
        from ..validation import check_output_folder

        check_output_folder(args.stems, files=CUE_FILES, inputs=inputs + [args.out], what="--stems")
    return read_plan(args.plan) if args.plan else None


def check_continue_args(args) -> None:
    """Arguments, input and output files of ``continue`` before the audio is read or a model loaded."""
    from ..validation import AUDIO_FORMATS, check_input_file, check_output_file

    check_args(args)
    check_input_file(args.audio, "--audio")
    check_output_file(args.out, formats=AUDIO_FORMATS, inputs=[args.audio], what="--out")
    if args.plan_out:
        check_output_file(args.plan_out, inputs=[args.audio, args.out], what="--plan-out")


def cmd_dub(args) -> int:
    from ..atomic import write_text_atomic
    from ..tasks.dubbing import dub_video, dubbing_plan, max_scene_seconds
    from ..pipeline import resolve_device

    given_plan = check_dub_args(args)
    hooks, close = tqdm_hooks(not args.quiet)
    try:
        max_scene = max_scene_seconds(clip_window(args), args.crossfade)
        scenes, captioned = _scenes(args, max_scene)
        if not captioned and not args.plan:
            from ..media.captioning import VisionCaptioner

            cap = VisionCaptioner.from_pretrained(args.vlm, model_search_dirs(args), device=resolve_device(args.device))
            cap.caption_scenes(scenes, args.brief, hooks=hooks)
            del cap
            gc.collect()
        if args.scenes_out:
            write_text_atomic(args.scenes_out, scenes.to_json())
        if args.captions_only:
            if not args.scenes_out:
                print(scenes.to_json())
            return 0
        pipe = pipeline(args)
        if given_plan is not None:
            plan = given_plan
        else:
            plan = dubbing_plan(pipe.models.planner, scenes, args.brief, event_captions=args.event_captions,
                                lead=lead(args), max_new_tokens=args.max_new_tokens, hooks=hooks,
                                plan_options=pipe.perf.plan_kwargs).plan
        res = dub_video(pipe, args.video, args.out, scenes, plan=plan, **settings(args).render_kwargs(),
                        existing_audio=args.existing_audio, mix_gain_db=args.mix_gain_db,
                        audio_codec=args.audio_codec, hooks=hooks)
        if args.plan_out:
            write_text_atomic(args.plan_out, res.plan.to_json())
        if args.stems:   # cues on the video's clock: the soundtrack starts at the first frame
            track = res.soundtrack
            write_result_stems(args.stems, track.clips, res.plan, track.sample_rate, track.crossfade,
                               args.crossfade_curve, origin=scenes.info.start)
    finally:
        close()
    for p in res.plan.problems + res.soundtrack.problems:
        print(f"note: {p}", file=sys.stderr)
    print(f"wrote {res.path} ({scenes.duration:.2f} s, {len(scenes.scenes)} scenes)", file=sys.stderr)
    return 0


def cmd_continue(args) -> int:
    from ..stages.audio import write_audio
    from ..tasks.continuation import (PlaceholderLayout, WhisperFeatures, build_audio_context, check_input_audio,
                               continue_audio, load_audio_file)
    from ..atomic import write_text_atomic
    from ..errors import InputError
    from ..models.loading import Checkpoint

    check_continue_args(args)
    parts = args.placeholder.split(",")
    if len(parts) != 3:
        raise InputError("--placeholder needs three comma-separated parts: open,slot,close (open/close may be empty).")
    layout = PlaceholderLayout(*parts)
    wave, sr = load_audio_file(args.audio)
    audio = check_input_audio(wave, sr)
    pipe = pipeline(args)
    tensors = Checkpoint(pipe.models.paths.checkpoint).tensors
    whisper = None
    if args.understanding != "text":
        from ..tasks.continuation import ResamplerSpec, resampler_status

        status, why = resampler_status(ResamplerSpec.from_config(pipe.models.config.raw), tensors)
        if status == "trained":
            from ..errors import ModelFilesError

            try:
                whisper = WhisperFeatures.from_pretrained(args.whisper, model_search_dirs(args),
                                                          device=pipe.models.planner.device)
            except ModelFilesError as e:
                if args.understanding == "whisper" or not args.audio_description.strip():
                    raise
                print(f"note: {e}\nnote: using the text description instead", file=sys.stderr)
        else:
            print(f"note: this checkpoint has no trained audio-understanding weights ({why})", file=sys.stderr)
    ctx = build_audio_context(pipe.models.planner, audio, checkpoint_tensors=tensors, whisper=whisper,
                              description=args.audio_description, mode=args.understanding,
                              long_input=args.long_input, layout=layout)
    hooks, close = tqdm_hooks(not args.quiet)
    try:
        res = continue_audio(pipe, ctx, args.instruction, args.duration, output=args.output, lead=lead(args),
                             max_new_tokens=args.max_new_tokens, **settings(args).render_kwargs(), hooks=hooks)
    finally:
        close()
    for p in res.problems:
        print(f"note: {p}", file=sys.stderr)
    if args.plan_out:
        write_text_atomic(args.plan_out, res.plan_result.plan.to_json())
    write_audio(args.out, res.audio, res.sample_rate)
    print(f"wrote {args.out} ({res.audio.shape[-1] / res.sample_rate:.2f} s, understanding: {ctx.mode})",
          file=sys.stderr)
    return 0


COMMANDS = {"dub": cmd_dub, "continue": cmd_continue}
