"""Decode and save nodes: latents -> clips -> the crossfaded story -> WAV/FLAC in the output folder."""
from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..audiostory_core.errors import InputError
from ..audiostory_core.stages.audio import crossfade_concat, decode_clips, resample, write_audio
from ..audiostory_core.stages.event_tokens import clip_seconds
from . import comfy_models as cm
from .common import CATEGORY, Events, make_hooks, reference_numerics
from .logic import (CROSSFADE_CURVES, SAVE_FORMATS, EventsBundle, audio_dict, check_latent_matches,
                    from_comfy_latent, pad_clips, safe_prefix, workflow_metadata, write_flac_with_metadata)

log = logging.getLogger("AudioStory")


class AudioStoryDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStoryDecode",
            display_name="AudioStory Decode",
            category=CATEGORY,
            description="VAE-decodes every clip, trims it to its event, resamples and crossfades the story.",
            inputs=[
                io.Vae.Input("vae"),
                io.Latent.Input("samples"),
                Events.Input("events"),
                io.Float.Input("crossfade", default=3.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Seconds of overlap; the same value as in AudioStoryEventTokens."),
                io.Int.Input("sample_rate", default=32000, min=0, max=192000,
                             tooltip="32000 = reference output rate; 0 = the VAE's own rate (44100)."),
                io.Combo.Input("curve", options=list(CROSSFADE_CURVES), default="linear", optional=True,
                               tooltip="linear = reference; equal_power keeps loudness through the fade."),
            ],
            outputs=[
                io.Audio.Output(display_name="audio", tooltip="The whole story."),
                io.Audio.Output(display_name="clips", tooltip="Every event's clip, zero-padded into one batch."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, crossfade=None, sample_rate=None, **kwargs):
        if crossfade is not None and crossfade < 0:
            return f"crossfade must be >= 0 s, got {crossfade}"
        if sample_rate is not None and 0 < sample_rate < 8000:
            return f"sample_rate must be 0 (VAE rate) or at least 8000 Hz, got {sample_rate}"
        return True

    @classmethod
    @reference_numerics
    def execute(cls, vae, samples, events, crossfade, sample_rate, curve="linear") -> io.NodeOutput:
        if not isinstance(events, EventsBundle):
            raise InputError("events must come from AudioStoryEventTokens.")
        lat = samples["samples"]
        check_latent_matches(lat, events)
        if abs(float(crossfade) - events.crossfade) > 1e-9:
            log.warning("AudioStoryDecode crossfade %.3g s differs from the %.3g s the clips were rendered for.",
                        crossfade, events.crossfade)
        secs = clip_seconds(events.durations, float(crossfade))
        hooks = make_hooks(cls.hidden.unique_id)
        if isinstance(vae, cm.AudioStoryVAE):
            mm.load_models_gpu([vae.patcher], force_full_load=True)
            clips = decode_clips(vae.diffusers_vae, from_comfy_latent(lat), secs, hooks)
            sr_vae = vae.sample_rate
        else:  # any other comfy audio VAE (e.g. Stable Audio's): decode through its interface
            sr_vae = 44100
            clips = []
            for i in range(lat.shape[0]):
                hooks.check()
                wav = vae.decode(lat[i:i + 1]).movedim(-1, 1)[0].float().cpu()
                clips.append(wav[:, : int(secs[i] * sr_vae)])
                hooks.report("decode", i + 1, lat.shape[0])
        sr = sr_vae if int(sample_rate) == 0 else int(sample_rate)
        clips = [resample(c, sr_vae, sr) for c in clips]
        story = crossfade_concat(clips, sr, float(crossfade), curve)
        return io.NodeOutput(audio_dict(story, sr), audio_dict(pad_clips(clips), sr))


class AudioStorySaveAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStorySaveAudio",
            display_name="AudioStory Save Audio",
            category=CATEGORY,
            description="Saves WAV (32-bit float) or FLAC (24-bit, with the workflow embedded so the file can be "
                        "dropped back onto ComfyUI) into the output folder.",
            inputs=[
                io.Audio.Input("audio"),
                io.String.Input("filename_prefix", default="audio/AudioStory",
                                tooltip="Sub-folder/name inside the ComfyUI output folder."),
                io.Combo.Input("format", options=list(SAVE_FORMATS), default="flac",
                               tooltip="flac carries the workflow in its tags; WAV cannot."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio, filename_prefix, format) -> io.NodeOutput:
        from comfy.cli_args import args

        if format not in SAVE_FORMATS:
            raise InputError(f"format must be one of {SAVE_FORMATS}")
        if not isinstance(audio, dict) or "waveform" not in audio:
            raise InputError("audio is not an AUDIO value.")
        prefix = safe_prefix(filename_prefix)
        out_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
        meta = {} if args.disable_metadata else workflow_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        results = []
        sr = int(audio["sample_rate"])
        for b, wave in enumerate(audio["waveform"].cpu()):
            mm.throw_exception_if_processing_interrupted()
            name = f"{filename.replace('%batch_num%', str(b))}_{counter:05}_.{format}"
            path = Path(folder) / name
            if format == "flac":
                write_flac_with_metadata(path, wave, sr, meta)
            else:
                write_audio(path, wave, sr, "wav")
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        return io.NodeOutput(ui={"audio": results})


NODES = [AudioStoryDecode, AudioStorySaveAudio]
