"""Decode and save nodes: latents -> clips -> the crossfaded story -> WAV/FLAC/MP3/Opus in the output folder."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..audiostory_core.errors import InputError
from ..audiostory_core.validation import check_texts
from ..audiostory_core.stages.audio import clip_samples, crossfade_concat, resample, write_audio
from ..audiostory_core.stages.event_tokens import clip_seconds
from ..audiostory_core.models.config import HOP
from ..audiostory_core.stages.fast_vae import DEFAULT_OVERLAP
from ..audiostory_core.stages.loudness import (DEFAULT_TRUE_PEAK, LOUDNESS_OFF, LOUDNESS_RANGE, TRUE_PEAK_RANGE,
                                               full_scale_note, normalize_loudness)
from ..audiostory_core.tasks.stems import write_stems
from .common import CATEGORY, Events, comfy_low_vram, make_hooks, node_perf, reference_input, reference_numerics
from .widgets import setting_input
from .input_checks import sample_rate_problem
from .layout import audio_dict, check_latent_matches, pad_clips
from .peaks import peaks_ui
from .save import SAVE_FORMATS, safe_prefix, workflow_metadata
from .values import EventsBundle

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
                setting_input("crossfade", step=0.1,
                              tooltip="Seconds of overlap; the same value as in AudioStoryEventTokens."),
                setting_input("sample_rate", tooltip="32000 = reference output rate; 0 = the VAE's own rate (44100)."),
                setting_input("crossfade_curve", "curve", optional=True),
                reference_input(),
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
    def execute(cls, vae, samples, events, crossfade, sample_rate, curve="linear", reference=False) -> io.NodeOutput:
        if not isinstance(events, EventsBundle):
            raise InputError("events must come from AudioStoryEventTokens.")
        check_latent_matches(samples["samples"], events)
        if abs(float(crossfade) - events.crossfade) > 1e-9:
            log.warning("AudioStoryDecode crossfade %.3g s differs from the %.3g s the clips were rendered for.",
                        crossfade, events.crossfade)
        sr_vae = int(getattr(vae, "sample_rate", 44100))
        together = not node_perf(reference).reference_vae and not comfy_low_vram()
        clips = decode_with_vae(vae, samples["samples"], clip_seconds(events.durations, float(crossfade)), sr_vae,
                                make_hooks(cls.hidden.unique_id), together=together)
        sr = sr_vae if int(sample_rate) == 0 else int(sample_rate)
        clips = [resample(c, sr_vae, sr) for c in clips]
        story = crossfade_concat(clips, sr, float(crossfade), curve)
        # the Timeline widget draws each event's clip in its block (UI output only: no new socket)
        captions = [e.caption for e in events.plan.events] if events.plan is not None else [""] * events.count
        return io.NodeOutput(audio_dict(story, sr), audio_dict(pad_clips(clips), sr),
                             ui=peaks_ui(captions, events.durations, clips, sr))


def decode_with_vae(vae, latent, seconds, sample_rate: int, hooks, together: bool = False) -> list:
    """Decode through ``comfy.sd.VAE.decode`` (memory-managed load, batching and the OOM-to-tiled fallback
    of core) and trim each clip to its event: list of [C, S] float32 on CPU.

    ``together`` (the default path): every clip in one call, latent frames past the longest clip (plus
    the decoder's context) skipped, as the core fast decode. Otherwise one clip per call: the numbers of
    the reference decode, with a progress step and a Cancel check per clip (also under --lowvram)."""
    if together:
        n = [int(s * sample_rate) for s in seconds]
        keep = min(latent.shape[-1], max(math.ceil(k / HOP) for k in n) + DEFAULT_OVERLAP)
        hooks.check()
        wav = vae.decode(latent[..., :keep]).movedim(-1, 1).float().cpu()
        hooks.report("decode", latent.shape[0], latent.shape[0])
        return [wav[i, :, :n[i]] for i in range(latent.shape[0])]
    clips = []
    for i in range(latent.shape[0]):
        hooks.check()
        wav = vae.decode(latent[i:i + 1]).movedim(-1, 1)[0].float().cpu()
        clips.append(wav[:, : int(seconds[i] * sample_rate)])
        hooks.report("decode", i + 1, latent.shape[0])
    return clips


# Lossy formats are written by ComfyUI core's audio save helper (its encoder settings, metadata and player).
CORE_SAVE_FORMATS = ("mp3", "opus")
# core's quality choices: mp3 takes V0/128k/320k, opus 64k-320k (another choice keeps the encoder's default)
CORE_QUALITIES = ("V0", "64k", "96k", "128k", "192k", "320k")


class AudioStorySaveAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AudioStorySaveAudio",
            display_name="AudioStory Save Audio",
            category=CATEGORY,
            description="Saves WAV (32-bit float), FLAC (24-bit, with the workflow embedded so the file can be "
                        "dropped back onto ComfyUI), MP3 or Opus (ComfyUI core's encoder and metadata) into the "
                        "output folder, optionally normalized to an EBU R128 loudness under a true-peak ceiling.",
            inputs=[
                io.Audio.Input("audio"),
                io.String.Input("filename_prefix", default="audio/AudioStory",
                                tooltip="Sub-folder/name inside the ComfyUI output folder."),
                io.Combo.Input("format", options=list(SAVE_FORMATS) + list(CORE_SAVE_FORMATS), default="flac",
                               tooltip="flac, mp3 and opus carry the workflow in their tags; WAV cannot."),
                # new inputs go last (saved workflows keep their widget values by position)
                io.Combo.Input("quality", options=list(CORE_QUALITIES), default="128k", optional=True,
                               tooltip="mp3: V0, 128k or 320k; opus: 64k to 320k (ComfyUI core's settings). "
                                       "Ignored for wav and flac."),
                io.Float.Input("loudness_lufs", default=LOUDNESS_OFF, min=LOUDNESS_RANGE[0], max=LOUDNESS_OFF,
                               step=0.5, optional=True,
                               tooltip=f"{LOUDNESS_OFF:g} = the level as generated. Otherwise the EBU R128 "
                                       f"integrated loudness to reach ({LOUDNESS_RANGE[0]:g} to "
                                       f"{LOUDNESS_RANGE[1]:g} LUFS; e.g. -16 streaming, -23 broadcast)."),
                io.Float.Input("true_peak_dbtp", default=DEFAULT_TRUE_PEAK, min=TRUE_PEAK_RANGE[0],
                               max=TRUE_PEAK_RANGE[1], step=0.1, optional=True,
                               tooltip="With a loudness target: the true-peak ceiling; the gain stops there, "
                                       "even under the target."),
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
    def validate_inputs(cls, filename_prefix=None):
        """The prefix's own rules (length, no NUL byte, inside the output folder), before anything renders."""
        if filename_prefix is None:
            return True
        try:
            check_texts(filename_prefix=filename_prefix)
            safe_prefix(filename_prefix)
        except InputError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, audio, filename_prefix, format, quality="128k", loudness_lufs=LOUDNESS_OFF,
                true_peak_dbtp=DEFAULT_TRUE_PEAK, clips=None, events=None, stems=False) -> io.NodeOutput:
        """Writes the files and returns the same UI payload as core SaveAudio (``{"audio": [...]}``), which the
        pack's web extension (web/audiostory.js) plays in an audio widget on the node."""
        check_texts(filename_prefix=filename_prefix)
        from comfy.cli_args import args

        split = stem_clips(clips, events) if stems else None     # checked before anything is written
        audio = output_level(audio, loudness_lufs, true_peak_dbtp)
        if format in CORE_SAVE_FORMATS:
            if quality not in CORE_QUALITIES:
                raise InputError(f"quality must be one of {CORE_QUALITIES}, got {quality!r}")
            saved = ui.AudioSaveHelper.save_audio(audio, filename_prefix=safe_prefix(filename_prefix),
                                                  folder_type=io.FolderType.output, cls=cls, format=format,
                                                  quality=quality)
            if split is not None:
                save_stems(*split, events, saved[0])
            return io.NodeOutput(ui=ui.SavedAudios(saved))
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
    write_stems(folder, clips, captions, sample_rate, events.crossfade, crossfade_curve=None)


def output_level(audio, loudness_lufs: float, true_peak_dbtp: float):
    """The AUDIO to save: each batch item normalized when a loudness is set; notes go to the log."""
    if not isinstance(audio, dict) or "waveform" not in audio:
        raise InputError("audio is not an AUDIO value.")
    sr = int(audio["sample_rate"])
    waves = audio["waveform"].cpu().float()
    if loudness_lufs != LOUDNESS_OFF:
        items = []
        for b, wave in enumerate(waves):
            res = normalize_loudness(wave, sr, loudness_lufs, true_peak_dbtp)
            for note in res.notes:
                log.warning("AudioStory Save Audio, item %d: %s", b, note)
            log.info("AudioStory Save Audio, item %d: loudness %.1f -> %.1f LUFS, true peak %.1f dBTP", b,
                     res.loudness_before, res.loudness_after, res.true_peak_after)
            items.append(res.audio)
        waves = torch.stack(items)
        audio = {**audio, "waveform": waves}
    note = full_scale_note(waves)
    if note:
        log.warning("AudioStory Save Audio: %s", note)
    return audio


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
        write_audio(Path(folder) / name, wave, sr, format, metadata=meta if format == "flac" else None)
        results.append(ui.SavedResult(name, subfolder, io.FolderType.output))
    return results


NODES = [AudioStoryDecode, AudioStorySaveAudio]
