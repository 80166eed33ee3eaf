"""Training data from video: the audio track on the video's clock, events from the user or from the dubbing VLM.

Videos are synthetic (PyAV): hard cuts at known times, each shot its own flat colour (SHOT_COLOURS) and its
own tone. A stub captioner with the VLM captioner's interface names the shot whose colour fills the keyframe it
is given, so the expected caption of every event follows from the cut times alone; the expected tone of every
clip too (its FFT peak). The real path (tiny random VLM, the CLI) is checked at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic_media import SHOT_COLOURS, write_audio_only, write_video
from audiostory_core.errors import ModelFilesError
from audiostory_core.training.datasets import load_examples
from audiostory_core.training.video_rows import CaptionSource

RATE, CHANNELS = 44100, 2                # what the VAE would ask for
FPS = 24
CUTS, LENGTH = [1.5, 3.0], 6.0
TONES = [300.0, 520.0, 780.0]            # shot k's tone in Hz
SHOT_CAPTIONS = ["an alarm rings", "leaves rustle in the wind", "waves crash on rocks", "bees buzz",
                 "a crowd murmurs", "a kettle whistles"]       # the stub's caption of SHOT_COLOURS[k]


class ColourCaptioner:
    """``VisionCaptioner.caption``'s interface: the caption of the shot whose colour fills the keyframe."""

    def __init__(self, text=None):
        self.calls = 0
        self.text = text

    def caption(self, images, hint: str = "") -> str:
        self.calls += 1
        rgb = np.median(np.asarray(images[0]).reshape(-1, 3), axis=0)
        shot = int(np.argmin([np.abs(rgb - np.array(c)).sum() for c in SHOT_COLOURS]))
        return self.text if self.text is not None else SHOT_CAPTIONS[shot]


def peak_hz(clip: torch.Tensor) -> float:
    """The clip's dominant frequency: the largest FFT bin of its first channel."""
    x = clip[0].numpy()
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec)) * RATE / x.size


def tone_share(clip: torch.Tensor, hz: float) -> float:
    """Share of the clip's energy within 15 Hz of ``hz``: near 1 only when the whole clip is that tone
    (measured 1.00 for every clip here; the audio placed 0.1 s late gives 0.93)."""
    x = clip[0].numpy()
    spec = np.abs(np.fft.rfft(x)) ** 2            # no window: the clip's edges count as much as its middle
    f = np.arange(spec.size) * RATE / x.size
    return float(spec[np.abs(f - hz) < 15].sum() / spec.sum())


def starts_ends(examples) -> list[tuple[float, float]]:
    plan = examples[0].plan
    t, out = 0.0, []
    for e in plan.events:
        out.append((t, t + e.duration))
        t += e.duration
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A data-set folder: the tone video, a silent one, a corrupt one, a one-frame one; a folder beside it."""
    d = tmp_path_factory.mktemp("videos")
    (d / "set").mkdir()
    (d / "outside").mkdir()
    write_video(d / "set" / "tones.mp4", cuts=CUTS, duration=LENGTH, fps=FPS, shot_tones=TONES)
    write_video(d / "set" / "silent.mp4", cuts=[1.0], duration=2.0, audio=False)
    write_video(d / "set" / "blink.mp4", cuts=[], duration=1 / FPS, fps=FPS)
    (d / "set" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    write_audio_only(d / "outside" / "secret.wav")
    write_video(d / "outside" / "other.mp4", cuts=[], duration=2.0)
    return d / "set"


def manifest(folder: Path, rows: list[dict], name: str = "clips.jsonl") -> Path:
    for old in folder.glob("*.jsonl"):
        old.unlink()
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / name


# ---------------------------------------------------------------- captioned by the VLM
def test_a_video_line_becomes_one_event_per_scene_with_its_shots_caption_and_tone(data):
    """Cuts at 1.5 and 3.0 s, the last shot (3 s) split at a 2 s clip limit: four scenes, each captioned
    from its own keyframe, each clip holding its shot's tone; the instruction is the one dubbing writes."""
    stub = ColourCaptioner()
    loads = []
    source = CaptionSource(load=lambda: loads.append(1) or stub)
    m = manifest(data, [{"video": "tones.mp4"}])
    examples, report = load_examples(m, RATE, CHANNELS, max_clip_seconds=2.0, captions=source)
    assert report.skipped == [] and len(examples) == 4 and loads == [1] and stub.calls == 4
    expected_spans = [(0.0, 1.5), (1.5, 3.0), (3.0, 4.5), (4.5, 6.0)]
    shots = [0, 1, 2, 2]
    for (s, t), (s0, t0) in zip(starts_ends(examples), expected_spans):
        assert abs(s - s0) <= 1 / FPS and abs(t - t0) <= 1 / FPS
    assert [ex.plan.events[ex.event].caption for ex in examples] == [SHOT_CAPTIONS[k] for k in shots]
    for ex, k in zip(examples, shots):
        assert abs(peak_hz(ex.wave) - TONES[k]) < 3.0, ex.source
        assert tone_share(ex.wave, TONES[k]) > 0.98, ex.source
        assert ex.wave.shape[0] == CHANNELS
    assert examples[0].plan.instruction == (
        "Create the soundtrack of this video: sound effects and ambience that follow the picture. "
        "The video has 4 scenes. 0.00-1.50 s: an alarm rings; 1.50-3.00 s: leaves rustle in the wind; "
        "3.00-4.50 s: waves crash on rocks; 4.50-6.00 s: waves crash on rocks. The total duration is 6.0 seconds.")


def test_user_events_on_a_video_use_its_audio_track_and_never_load_the_vlm(data):
    def no_vlm():
        raise AssertionError("the VLM was loaded for a line that has its events")

    events = [{"start": 0.2, "end": 1.3, "caption": "a low hum"}, {"start": 1.7, "end": 2.8, "caption": "a beep"},
              {"start": 3.2, "end": 5.8, "caption": "a whistle"}]
    m = manifest(data, [{"video": "tones.mp4", "instruction": "Three tones.", "events": events}])
    examples, report = load_examples(m, RATE, CHANNELS, max_clip_seconds=8.0, captions=CaptionSource(load=no_vlm))
    assert report.skipped == [] and [ex.plan.instruction for ex in examples] == ["Three tones."] * 3
    for ex, e, tone in zip(examples, events, TONES):
        assert ex.wave.shape[-1] == round(e["end"] * RATE) - round(e["start"] * RATE)
        assert abs(peak_hz(ex.wave) - tone) < 3.0
        assert tone_share(ex.wave, tone) > 0.98


# ---------------------------------------------------------------- bad data
def test_bad_video_lines_are_skipped_each_with_its_reason_and_the_rest_is_used(data):
    good = {"video": "tones.mp4", "instruction": "Tones.", "events": [{"start": 0.0, "end": 1.4, "caption": "low"}]}
    rows = [{"video": "silent.mp4", "instruction": "x", "events": [{"start": 0, "end": 1, "caption": "quiet"}]},
            {"video": "corrupt.mp4", "instruction": "x", "events": [{"start": 0, "end": 1, "caption": "broken"}]},
            {"video": "tones.mp4"},
            {"audio": "../outside/secret.wav", "caption": "up and out"},
            {"video": "../outside/other.mp4", "instruction": "x", "events": [{"start": 0, "end": 1, "caption": "o"}]},
            {"video": "missing.mp4", "instruction": "x", "events": [{"start": 0, "end": 1, "caption": "gone"}]},
            good]
    m = manifest(data, rows)
    examples, report = load_examples(m, RATE, CHANNELS, max_clip_seconds=8.0, confine=True,
                                     captions=CaptionSource(missing="pass --vlm NAME"))
    why = dict(report.skipped)
    assert sorted(why) == [f"clips.jsonl:{i}" for i in range(1, 7)]
    assert "has no audio track" in why["clips.jsonl:1"]
    assert "Cannot open" in why["clips.jsonl:2"] and "corrupt.mp4" in why["clips.jsonl:2"]
    assert why["clips.jsonl:3"] == ("this video row has no 'events' and no VLM was given to caption it: "
                                    "pass --vlm NAME")
    assert "outside the data set's folder" in why["clips.jsonl:4"]
    assert "outside the data set's folder" in why["clips.jsonl:5"]
    assert "does not exist" in why["clips.jsonl:6"]
    assert [ex.plan.events[ex.event].caption for ex in examples] == ["low"]
    assert abs(peak_hz(examples[0].wave) - TONES[0]) < 3.0


def test_vlm_captions_over_the_limits_and_scenes_too_short_are_skipped_by_name(data):
    m = manifest(data, [{"video": "tones.mp4"}, {"video": "blink.mp4"}])
    examples, report = load_examples(m, RATE, CHANNELS, max_clip_seconds=8.0,
                                     captions=CaptionSource(load=lambda: ColourCaptioner("x" * 1001)))
    why = dict(report.skipped)
    assert examples == [] and sorted(why) == ["clips.jsonl:1", "clips.jsonl:2"]
    assert "the VLM's caption of scene 1 (0.00-1.50 s)" in why["clips.jsonl:1"]
    assert "1001 characters; the limit is 1000" in why["clips.jsonl:1"]
    assert "scene 1 (0.00-0.04 s) lasts 0.042 s; an event needs at least 0.1 s" in why["clips.jsonl:2"]


def test_a_vlm_that_cannot_load_stops_the_run_instead_of_skipping_every_line(data):
    def missing():
        raise ModelFilesError("The vision-language model 'nope' was not found")

    m = manifest(data, [{"video": "tones.mp4"}])
    with pytest.raises(ModelFilesError, match="'nope' was not found"):
        load_examples(m, RATE, CHANNELS, max_clip_seconds=8.0, captions=CaptionSource(load=missing))


# ---------------------------------------------------------------- the CLI, with the tiny random VLM
def test_train_without_vlm_says_what_to_pass(tiny_root, data, tmp_path, capsys):
    from audiostory_core.cli.main import main
    from test_training import need_peft

    need_peft()
    m = manifest(data, [{"video": "tones.mp4"}])
    rc = main(["train", "--models", str(tiny_root), "--data", str(m), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "0 clips used, 1 skipped" in err
    assert "pass --vlm NAME" in err and "caption-videos" in err
    assert not (tmp_path / "run").exists()


def test_caption_videos_then_train_on_its_output(tiny_root, shared_root, data, tmp_path, capsys):
    """The wiring end to end: ``caption-videos`` captions the video with the tiny VLM (from its folder, as
    ``dub --vlm``) into a JSONL that refuses to be overwritten by accident; ``train --steps 1`` uses it."""
    from safetensors.torch import save_file

    from audiostory_core.cli.main import main
    from audiostory_core.models.config import locate, max_clip_seconds_for
    from audiostory_core.models.loading import load_models
    from audiostory_core.training.datasets import latent_cache_key
    from audiostory_core.training.lora_files import read_lora
    from test_training import need_peft
    from tiny_media_models import build_tiny_vlm

    need_peft()
    vlm = build_tiny_vlm(tmp_path / "tiny-vlm", shared_root / "Qwen2.5-tiny-Instruct")
    m = manifest(data, [{"video": "tones.mp4"}, {"video": "silent.mp4"}], name="videos.jsonl")
    out = tmp_path / "review" / "captions.jsonl"
    out.parent.mkdir()
    cmd = ["caption-videos", "--models", str(tiny_root), "--data", str(m), "--out", str(out), "--vlm", str(vlm),
           "--quiet"]
    rc = main(cmd)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "1 lines used, 1 skipped" in err and "videos.jsonl:2" in err and "no audio track" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 1          # the silent video is left out, reported above
    assert (out.parent / lines[0]["video"]).resolve() == (data / "tones.mp4").resolve()   # relative to --out
    events = lines[0]["events"]
    assert max_clip_seconds_for(locate(tiny_root)) > LENGTH - CUTS[-1]     # no shot is split: one event per shot
    assert len(events) == 3 and abs(events[0]["start"]) < 1e-9 and abs(events[-1]["end"] - LENGTH) <= 1 / FPS
    for e, cut in zip(events, CUTS):
        assert abs(e["end"] - cut) <= 1 / FPS
    assert all(isinstance(e["caption"], str) and e["caption"].strip() for e in events)
    assert lines[0]["instruction"].startswith("Create the soundtrack of this video")

    before = out.read_bytes()
    assert main(cmd) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before

    # train on the reviewed file: the tiny VAE cannot encode 64 channels, so the latent cache is filled first
    vae_cfg = json.loads((tiny_root / "Flux_detokenizer" / "vae_config.json").read_text())
    frames = json.loads((tiny_root / "Flux_detokenizer" / "config.json").read_text())["audio_seq_len"]
    examples, report = load_examples(out, vae_cfg["sampling_rate"], vae_cfg["audio_channels"],
                                     max_clip_seconds_for(locate(tiny_root)))
    assert report.skipped == [] and len(examples) == len(events)
    full_cfg = dict(load_models(locate(tiny_root), torch.float32, "cpu", planner=False, dit=False).vae.config)
    cache = tmp_path / "cache"
    cache.mkdir()
    for ex in examples:
        save_file({"latents": torch.randn(frames, 64)},
                  str(cache / f"{latent_cache_key(ex, full_cfg, frames, 0)}.safetensors"))
    rc = main(["train", "--models", str(tiny_root), "--data", str(out), "--out", str(tmp_path / "run"),
               "--steps", "1", "--latent-cache", str(cache), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"{len(events)} clips used, 0 skipped" in err
    assert read_lora(tmp_path / "run" / "lora.safetensors").metadata["target"] == "dit"
