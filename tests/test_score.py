"""CLAP scores per event: reproducible, fed the right span and caption, own caption > other captions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audiostory_core.cli.main import main
from audiostory_core.errors import InputError, ModelFilesError
from audiostory_core.stages.audio import crossfade_concat, resample, write_audio
from audiostory_core.stages.event_tokens import clip_seconds
from audiostory_core.stages.plan import StoryEvent, StoryPlan
from audiostory_core.tasks.score import (CLAP_SAMPLE_RATE, ClapScorer, event_spans, locate_clap, score_story,
                                         select_events, write_scores)
from tiny_clap import WINDOW_SECONDS, build_tiny_clap

SR = CLAP_SAMPLE_RATE
TONES = [300.0, 1000.0, 3000.0, 8000.0]


@pytest.fixture(scope="module")
def clap_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_clap(root / "clap-htsat-unfused")
    return root


@pytest.fixture()
def scorer(clap_root):
    return ClapScorer.from_pretrained(locate_clap(clap_root))


def _plan(durations, captions=None):
    captions = captions or [f"tone {i}" for i in range(len(durations))]
    return StoryPlan(instruction="a few tones one after another", reasoning="",
                     events=[StoryEvent(caption=c, duration=d) for c, d in zip(captions, durations)])


def _tone_story(durations, crossfade, sr=SR):
    """Event i is a pure tone TONES[i]; clips carry the crossfade tail and are joined as the pipeline does."""
    clips = []
    for i, s in enumerate(clip_seconds(list(durations), crossfade)):
        t = torch.arange(round(s * sr)) / sr
        clips.append((0.3 * torch.sin(2 * torch.pi * TONES[i] * t)).repeat(2, 1))
    return crossfade_concat(clips, sr, crossfade)


def test_event_spans_follow_the_crossfade_join():
    # by hand: clip 1 = 3 s (2 + 1 s tail); clip 2 starts where event 1 ends, at 2 s; clip 3 at 5 s
    assert event_spans([2.0, 3.0, 2.5], 1.0, SR) == [(0, 2 * SR), (2 * SR, 5 * SR), (5 * SR, 7.5 * SR)]
    # a clip shorter than the fade (the last, 0.5 s) is joined end to end (official rule): at 5 s, not 4 s
    assert event_spans([2.0, 2.0, 0.5], 1.0, SR) == [(0, 2 * SR), (2 * SR, 4 * SR), (5 * SR, 5.5 * SR)]
    # against the real decode path: clips trimmed at 44.1 kHz, resampled to 32 kHz, crossfaded
    durs, fade, sr = [3.0, 3.5, 3.5], 3.0, 32000
    g = torch.Generator().manual_seed(0)
    clips = [resample(torch.randn(2, int(s * 44100), generator=g), 44100, sr) for s in clip_seconds(durs, fade)]
    story = crossfade_concat(clips, sr, fade)
    n = int(fade * sr)
    for (start, _), clip in zip(event_spans(durs, fade, sr), clips):
        # outside the fades the story is the clip itself, so the clip starts exactly at the span start
        assert torch.equal(story[:, start + n:start + clip.shape[-1] - n], clip[:, n:-n])


def test_clap_is_fed_each_event_span_and_caption(scorer, monkeypatch):
    from transformers import ClapFeatureExtractor

    durs, fade = [2.0, 3.0, 2.5], 1.0
    story = _tone_story(durs, fade)
    waves, texts = [], []
    real_fe, real_tok = ClapFeatureExtractor.__call__, type(scorer.processor.tokenizer).__call__

    def fe(self, raw, *a, **k):
        assert k["sampling_rate"] == SR
        waves.append([np.array(w) for w in raw])
        return real_fe(self, raw, *a, **k)

    def tok(self, text, *a, **k):
        texts.append(list(text))
        return real_tok(self, text, *a, **k)

    monkeypatch.setattr(ClapFeatureExtractor, "__call__", fe)
    monkeypatch.setattr(type(scorer.processor.tokenizer), "__call__", tok)
    plan = _plan(durs)
    scores = score_story(scorer, plan, story, SR, fade)
    mono = story.mean(0).numpy()
    win = WINDOW_SECONDS * SR
    # events: 2 s = one window; 3 s = a 2 s and a 1 s window; 2.5 s = 2 s + 0.5 s; in event order
    expect = [mono[0:2 * SR], mono[2 * SR:4 * SR], mono[4 * SR:5 * SR], mono[5 * SR:7 * SR], mono[7 * SR:7 * SR + SR // 2]]
    assert [len(w) for w in waves[0]] == [len(e) for e in expect] and all(len(w) <= win for w in waves[0])
    for got, want in zip(waves[0], expect):
        assert np.array_equal(got, want)
    assert texts[0] == [e.caption for e in plan.events]
    # then the whole story (7.5 s: four windows) against the instruction
    assert np.array_equal(np.concatenate(waves[1]), mono) and texts[1] == [plan.instruction]
    assert len(scores.events) == 3 and scores.story is not None
    assert scores.spans == [(0.0, 2.0), (2.0, 5.0), (5.0, 7.5)]


def test_scores_are_reproducible_and_resampled_to_48k(clap_root, scorer):
    durs, fade = [2.0, 3.0, 2.5], 1.0
    plan = _plan(durs)
    story = _tone_story(durs, fade, sr=32000)
    a = score_story(scorer, plan, story, 32000, fade)
    b = score_story(ClapScorer.from_pretrained(clap_root / "clap-htsat-unfused"), plan, story, 32000, fade)
    assert a.events == b.events and a.story == b.story
    # the same audio given at 48 kHz scores (nearly) the same: the scorer resamples 32 kHz to 48 kHz first
    c = score_story(scorer, plan, resample(story, 32000, SR), SR, fade)
    assert np.allclose(a.events, c.events, atol=1e-4)
    assert all(-1.0 <= s <= 1.0 for s in a.events)


def test_own_caption_scores_higher_with_tied_towers(scorer, monkeypatch):
    """A CLAP whose towers both embed "which event": audio by its dominant tone, text by its caption."""
    fe = scorer.processor.feature_extractor
    captions = ["a dog barks", "rain falls on a tin roof", "thunder rolls", "a siren wails in the distance"]
    peak_bin = []
    for f in TONES:                     # calibrate: the mel bin where each pure tone peaks
        t = np.arange(SR) / SR
        mel = fe([(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)], sampling_rate=SR,
                 return_tensors="pt")["input_features"]
        peak_bin.append(int(mel[0, 0].mean(0).argmax()))
    assert len(set(peak_bin)) == len(TONES)
    dim = 16

    def audio_features(input_features, is_longer=None, **_):
        bins = input_features[:, 0].mean(1).argmax(-1)
        idx = [min(range(len(peak_bin)), key=lambda k: abs(peak_bin[k] - int(b))) for b in bins]
        return torch.nn.functional.one_hot(torch.tensor(idx), dim).float()

    tok = scorer.processor.tokenizer
    caption_of = {tuple(tok([c])["input_ids"][0]): k for k, c in enumerate(captions)}   # token ids -> event

    def text_features(input_ids, attention_mask=None, **_):
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]
        idx = [caption_of.get(r, dim - 1) for r in rows]
        return torch.nn.functional.one_hot(torch.tensor(idx), dim).float()

    monkeypatch.setattr(scorer.model, "get_audio_features", audio_features)
    monkeypatch.setattr(scorer.model, "get_text_features", text_features)
    durs, fade = [2.0, 3.0, 2.5, 2.0], 1.0
    story = _tone_story(durs, fade)
    own = score_story(scorer, _plan(durs, captions), story, SR, fade)
    swapped = score_story(scorer, _plan(durs, captions[1:] + captions[:1]), story, SR, fade)
    assert own.events == [1.0, 1.0, 1.0, 1.0]
    assert all(o > s for o, s in zip(own.events, swapped.events))


def test_selection_for_a_reroll(scorer):
    from audiostory_core.tasks.score import StoryScores

    s = StoryScores(events=[0.31, 0.12, 0.40, 0.20], story=0.3)
    assert select_events(s, "weakest") == [1]
    assert select_events(s, "weakest", count=2) == [1, 3]
    assert select_events(s, "below_threshold", threshold=0.25) == [1, 3]
    assert select_events(s, "below_threshold", threshold=0.1) == []
    with pytest.raises(InputError):
        select_events(s, "random")


def test_audio_shorter_than_the_plan_and_missing_clap_are_clear_errors(scorer, tmp_path):
    with pytest.raises(InputError, match="audio is 2.00 s long but the plan's events need 7.50 s"):
        score_story(scorer, _plan([2.0, 3.0, 2.5]), torch.zeros(1, 2 * SR), SR, 1.0)
    with pytest.raises(ModelFilesError) as e:
        locate_clap(tmp_path, "clap-htsat-unfused")
    assert f"hf download laion/clap-htsat-unfused " in str(e.value)      # a command that puts it where it is looked for
    assert f"--local-dir '{tmp_path / 'clap-htsat-unfused'}'" in str(e.value)


def test_score_cli_prints_a_table_and_writes_into_plan_json(clap_root, tmp_path, capsys):
    durs, fade = [2.0, 3.0, 2.5], 1.0
    plan = _plan(durs)
    (tmp_path / "plan.json").write_text(plan.to_json())
    write_audio(tmp_path / "story.wav", _tone_story(durs, fade, sr=32000), 32000)
    argv = ["score", "--models", str(clap_root), "--plan", str(tmp_path / "plan.json"),
            "--audio", str(tmp_path / "story.wav"), "--crossfade", "1", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    d = json.loads((tmp_path / "plan.json").read_text())
    assert [e["caption"] for e in d["events"]] == plan_captions(plan)            # the plan itself is kept
    assert len(d["scores"]["events"]) == 3 and d["scores"]["crossfade"] == 1.0
    for i, e in enumerate(d["events"]):
        assert e["clap_score"] == d["scores"]["events"][i]
        assert f"{e['clap_score']:+.3f}" in out and e["caption"] in out
    assert StoryPlan.from_json((tmp_path / "plan.json").read_text()).durations == durs   # still a plan
    # scoring again reads the crossfade back from the scored plan and gives the same numbers
    assert main(argv[:-4] + ["--device", "cpu"]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["scores"] == d["scores"]
    # wrong audio: a clear error, the plan untouched
    write_audio(tmp_path / "short.wav", torch.zeros(1, 32000), 32000)
    before = (tmp_path / "plan.json").read_bytes()
    assert main(argv[:6] + [str(tmp_path / "short.wav"), "--crossfade", "1"]) == 2
    assert "plan's events need" in capsys.readouterr().err
    assert (tmp_path / "plan.json").read_bytes() == before


def plan_captions(plan):
    return [e.caption for e in plan.events]


def test_write_scores_refuses_another_plan(tmp_path):
    from audiostory_core.tasks.score import StoryScores

    (tmp_path / "plan.json").write_text(_plan([2.0, 2.0]).to_json())
    with pytest.raises(InputError, match="does not hold the 3 events"):
        write_scores(tmp_path / "plan.json", StoryScores(events=[0.1, 0.2, 0.3], story=None), 3.0)


def test_download_only_clap_links_the_clap_folder(tmp_path):
    """``download --only clap`` (offline here: the fetch step is given the snapshot) builds
    ``<models>/clap-htsat-unfused`` that the scorer loads; a plain ``download`` does not fetch CLAP."""
    from audiostory_core.models.download import download_all

    snap = build_tiny_clap(tmp_path / "hub-snapshot", safetensors=False)     # the repo ships pytorch_model.bin
    (snap / "README.md").write_text("not needed")
    fetched = []

    def fetch(src, revision):
        fetched.append(src.repo)
        return snap

    root = tmp_path / "models"
    download_all(root, only=["clap"], fetch=fetch)
    assert fetched == ["laion/clap-htsat-unfused"]
    assert (root / "clap-htsat-unfused" / "pytorch_model.bin").is_file()
    assert not (root / "clap-htsat-unfused" / "README.md").exists()
    ClapScorer.from_pretrained(locate_clap(root))
    assert main(["download", "--models", str(tmp_path / "none"), "--only", "nonsense"]) == 2
