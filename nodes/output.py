"""Decode and save nodes: latents -> clips -> the crossfaded story -> WAV/FLAC in the output folder."""
from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io, ui

from ..audiostory_core.errors import InputError
from ..audiostory_core.stages.audio import clip_samples, crossfade_concat, resample, write_audio
from ..audiostory_core.stages.event_tokens import clip_seconds
from ..audiostory_core.tasks.stems import write_stems
from .common import CATEGORY, Events, make_hooks, reference_numerics
from .logic import (CROSSFADE_CURVES, SAVE_FORMATS, EventsBundle, audio_dict, check_latent_matches, pad_clips,
                    safe_prefix, sample_rate_problem, workflow_metadata, write_flac_with_metadata)

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
    def validate_inputs(cls, sample_rate=None):
        """Only sample_rate (0 or 8000-192000 Hz, which one min/max pair cannot say); crossfade and curve keep
        ComfyUI's own range and list checks."""
        return sample_rate_problem(sample_rate) or True

    @classmethod
    @reference_numerics
    def execute(cls, vae, samples, events, crossfade, sample_rate, curve="linear") -> io.NodeOutput:
        if not isinstance(events, EventsBundle):
            raise InputError("events must come from AudioStoryEventTokens.")
        check_latent_matches(samples["samples"], events)
        if abs(float(crossfade) - events.crossfade) > 1e-9:
            log.warning("AudioStoryDecode crossfade %.3g s differs from the %.3g s the clips were rendered for.",
                        crossfade, events.crossfade)
        sr_vae = int(getattr(vae, "sample_rate", 44100))
        clips = decode_with_vae(vae, samples["samples"], clip_seconds(events.durations, float(crossfade)), sr_vae,
                                make_hooks(cls.hidden.unique_id))
        sr = sr_vae if int(sample_rate) == 0 else int(sample_rate)
        clips = [resample(c, sr_vae, sr) for c in clips]
        story = crossfade_concat(clips, sr, float(crossfade), curve)
        return io.NodeOutput(audio_dict(story, sr), audio_dict(pad_clips(clips), sr))


def decode_with_vae(vae, latent, seconds, sample_rate: int, hooks) -> list:
    """Decode clip by clip through ``comfy.sd.VAE.decode`` (memory-managed load, batching and the
    OOM-to-tiled fallback of core) and trim each clip to its event: list of [C, S] float32 on CPU.

    One clip per call keeps the numbers of the CLI's reference decode (one clip per VAE call) and gives
    a progress step and a Cancel check per clip."""
    clips = []
    for i in range(latent.shape[0]):
        hooks.check()
        wav = vae.decode(latent[i:i + 1]).movedim(-1, 1)[0].float().cpu()
        clips.append(wav[:, : int(seconds[i] * sample_rate)])
        hooks.report("decode", i + 1, latent.shape[0])
    return clips


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
                io.Audio.Input("clips", optional=True,
                               tooltip="For stems: the clips output of AudioStoryDecode."),
                Events.Input("events", optional=True,
                             tooltip="For stems: the events the clips were rendered from (offsets, captions)."),
                io.Boolean.Input("stems", default=False, optional=True,
                                 tooltip="Also write every event's clip (before the crossfade) as a WAV at its "
                                         "offset, stems.json, an Audacity labels.txt and WebVTT cues.vtt into "
                                         "<name>_stems/ (needs clips and events connected)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio, filename_prefix, format, clips=None, events=None, stems=False) -> io.NodeOutput:
        """Writes the files and returns the same UI payload as core SaveAudio (``{"audio": [...]}``), which the
        pack's web extension (web/audiostory.js) plays in an audio widget on the node."""
        from comfy.cli_args import args

        split = stem_clips(clips, events) if stems else None     # checked before anything is written
        meta = {} if args.disable_metadata else workflow_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        saved = save_audio_files(audio, filename_prefix, format, meta)
        if split is not None:
            save_stems(*split, events, saved[0])
        return io.NodeOutput(ui=ui.SavedAudios(saved))


def stem_clips(clips, events) -> tuple[list, int]:
    """The zero-padded ``clips`` batch of AudioStoryDecode cut back to each clip's length ([C, S_i] each), and
    its sample rate."""
    if not isinstance(events, EventsBundle) or not isinstance(clips, dict) or "waveform" not in clips:
        raise InputError("stems needs the clips output of AudioStoryDecode and the events it decoded, both "
                         "connected to AudioStorySaveAudio (or turn stems off).")
    batch, sr = clips["waveform"], int(clips["sample_rate"])
    lengths = [clip_samples(s, events.vae_sample_rate, sr) for s in events.clip_seconds]
    if batch.shape[0] != events.count or max(lengths) != batch.shape[-1]:
        raise InputError(f"The clips ({batch.shape[0]} x {batch.shape[-1]} samples) do not match the "
                         f"{events.count} events ({max(lengths)} samples for the longest); connect the clips "
                         "and events of the same AudioStoryDecode, with its crossfade equal to the events'.")
    return [batch[i, :, :n].float().cpu() for i, n in enumerate(lengths)], sr


def save_stems(clips: list, sample_rate: int, events: EventsBundle, story: ui.SavedResult) -> None:
    """Stems, labels and cues of one story into ``<story name>_stems/`` next to the saved story."""
    folder = Path(folder_paths.get_output_directory()) / story.subfolder / (Path(story.filename).stem + "stems")
    captions = [e.caption for e in events.plan.events] if events.plan is not None else [""] * events.count
    write_stems(folder, clips, captions, sample_rate, events.crossfade, curve=None)


def save_audio_files(audio, filename_prefix: str, format: str, meta: dict) -> list:
    """Every batch item of an AUDIO as ``<prefix>_<counter>_.<format>`` in the output folder (atomically)."""
    if format not in SAVE_FORMATS:
        raise InputError(f"format must be one of {SAVE_FORMATS}")
    if not isinstance(audio, dict) or "waveform" not in audio:
        raise InputError("audio is not an AUDIO value.")
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(safe_prefix(filename_prefix),
                                                                               folder_paths.get_output_directory())
    results, sr = [], int(audio["sample_rate"])
    for b, wave in enumerate(audio["waveform"].cpu()):
        mm.throw_exception_if_processing_interrupted()
        name = f"{filename.replace('%batch_num%', str(b))}_{counter + b:05}_.{format}"
        if format == "flac":
            write_flac_with_metadata(Path(folder) / name, wave, sr, meta)
        else:
            write_audio(Path(folder) / name, wave, sr, "wav")
        results.append(ui.SavedResult(name, subfolder, io.FolderType.output))
    return results


NODES = [AudioStoryDecode, AudioStorySaveAudio]
