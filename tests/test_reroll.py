"""Re-roll: only the chosen events are sampled; every other event keeps its latent and audio bit for bit."""
from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audiostory_core.cli.main import main
from audiostory_core.errors import InputError, PlanError
from audiostory_core.models.modules import AudioStoryDiT
from audiostory_core.stages.plan import StoryPlan
from audiostory_core.tasks.reroll import format_events, parse_events, read_dump, reroll
from tiny_clap import build_tiny_clap

TRAIN = "A train arrives and leaves."     # the tiny checkpoint plans 3 events (3.0, 3.5, 3.5 s) for 10 s
STEPS = 4


class DiTSpy:
    """Counts DiT forward calls and the batch each one sees (CFG doubles it: 2 rows per event)."""

    def __init__(self, dit, monkeypatch):
        self.batches: list[int] = []
        real = dit.forward

        def forward(x, *args, **kwargs):
            self.batches.append(int(x.shape[0]))
            return real(x, *args, **kwargs)

        monkeypatch.setattr(dit, "forward", forward)


@pytest.fixture(scope="module")
def story(tiny_pipeline):
    return tiny_pipeline.generate(TRAIN, 10.0, steps=STEPS, seed=0, noise="seeded")


def test_event_lists_are_one_based_and_checked():
    assert parse_events("2,4", 5) == [1, 3]
    assert parse_events(" 4, 2-3 ", 5) == [1, 2, 3]
    assert parse_events("all", 3) == [0, 1, 2]
    assert parse_events("", 3) == [] and parse_events(None, 3) == []
    assert format_events([3, 1]) == "2,4"
    with pytest.raises(InputError, match=r"events 1\.\.3"):
        parse_events("4", 3)
    with pytest.raises(InputError, match="'2,4' or '2-4'"):
        parse_events("second", 3)


def test_reroll_samples_only_the_chosen_event_and_keeps_the_others(tiny_pipeline, story, monkeypatch):
    pipe = tiny_pipeline
    assert len(story.plan.events) == 3
    spy = DiTSpy(pipe.models.dit, monkeypatch)
    new = reroll(pipe, story.plan, story.tokens, story.latents, [1], previous_plan=story.plan, steps=STEPS, seed=7)
    # sampling work: STEPS Euler calls, each on the one re-rolled event (x2 for CFG), never on the others
    assert spy.batches == [2] * STEPS
    assert torch.equal(new.latents[0], story.latents[0]) and torch.equal(new.latents[2], story.latents[2])
    assert not torch.allclose(new.latents[1], story.latents[1])
    assert torch.equal(new.clips[0], story.clips[0]) and torch.equal(new.clips[2], story.clips[2])
    assert new.audio.shape == story.audio.shape
    # story samples outside event 2 and its two crossfades are the old ones, bit for bit
    sr = new.sample_rate
    start2 = round(3.0 * sr)                       # event 2's clip starts where event 1 ends
    assert torch.equal(new.audio[:, :start2], story.audio[:, :start2])
    end2 = start2 + new.clips[1].shape[-1]        # event 2's clip incl. its crossfade tail
    assert torch.equal(new.audio[:, end2:], story.audio[:, end2:])
    assert not torch.equal(new.audio[:, start2:end2], story.audio[:, start2:end2])


def test_rerolled_event_is_the_full_render_with_its_own_seed(tiny_pipeline, story):
    """Event i re-rolled with seed s gets noise s + i, exactly the row a full seed-s render would give."""
    new = reroll(tiny_pipeline, story.plan, story.tokens, story.latents, [2], steps=STEPS, seed=7)
    full = tiny_pipeline.generate(plan=story.plan, steps=STEPS, seed=7, noise="seeded")
    assert torch.allclose(new.latents[2], full.latents[2], atol=1e-5, rtol=1e-5)


def test_nothing_to_render_returns_the_previous_latents(tiny_pipeline, story, monkeypatch):
    spy = DiTSpy(tiny_pipeline.models.dit, monkeypatch)
    lat = tiny_pipeline.sample(story.tokens, steps=STEPS, previous_latents=story.latents, render_events=[])
    assert spy.batches == [] and torch.equal(lat, story.latents)


def test_edited_events_must_be_rerolled(tiny_pipeline, story):
    edited = StoryPlan.from_dict(json.loads(story.plan.to_json()))
    edited.events[0].caption = "a bell rings at the station"
    with pytest.raises(PlanError, match=r"Events \[1\] were edited.*--reroll 1,2"):
        reroll(tiny_pipeline, edited, story.tokens, story.latents, [1], previous_plan=story.plan, steps=STEPS)
    with pytest.raises(InputError, match=r"events \[4\] do not exist"):
        tiny_pipeline.sample(story.tokens, steps=STEPS, previous_latents=story.latents, render_events=[3])


def test_edited_caption_is_reencoded_for_the_rerolled_event_only(tiny_pipeline, story):
    edited = StoryPlan.from_dict(json.loads(story.plan.to_json()))
    edited.events[0].caption = "a bell rings at the station"
    new = reroll(tiny_pipeline, edited, story.tokens, story.latents, [0], previous_plan=story.plan, steps=STEPS,
                 seed=0)
    assert not torch.equal(new.tokens.fused[0], story.tokens.fused[0])
    assert torch.equal(new.tokens.fused[1:], story.tokens.fused[1:])
    assert torch.equal(new.latents[1:], story.latents[1:])


# ---------------------------------------------------------------- CLI
def test_cli_rerolls_from_a_dump(tiny_root, tmp_path, monkeypatch):
    first, dump = tmp_path / "story.wav", tmp_path / "dump"
    assert main(["generate", "--models", str(tiny_root), "--instruction", TRAIN, "--duration", "10",
                 "--out", str(first), "--steps", str(STEPS), "--dump", str(dump), "--quiet"]) == 0
    before = read_dump(dump)
    assert before.settings["crossfade"] == 3.0 and before.settings["steps"] == STEPS

    # count DiT work in the re-roll run: the CLI builds a fresh DiT, so spy on its class
    batches: list[int] = []
    dit_cls = AudioStoryDiT
    real = dit_cls.forward

    def forward(self, x, *args, **kwargs):
        batches.append(int(x.shape[0]))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(dit_cls, "forward", forward)
    again, dump2 = tmp_path / "rerolled.wav", tmp_path / "dump2"
    clap = build_tiny_clap(tmp_path / "clap")
    assert main(["generate", "--models", str(tiny_root), "--reuse", str(dump), "--reroll", "2", "--reroll-seed", "7",
                 "--steps", str(STEPS), "--out", str(again), "--dump", str(dump2), "--quiet",
                 "--score", "--clap", str(clap)]) == 0
    assert batches == [2] * STEPS                       # STEPS Euler steps on one event (x2 CFG)
    scored = json.loads((dump2 / "plan.json").read_text())        # --score wrote into the new dump's plan
    assert len(scored["scores"]["events"]) == 3 and all("clap_score" in e for e in scored["events"])
    after = load_file(str(dump2 / "latents.safetensors"))["latents"]
    assert torch.equal(after[0], before.latents[0]) and torch.equal(after[2], before.latents[2])
    assert not torch.equal(after[1], before.latents[1])
    a, sr = sf.read(str(first), dtype="float32")
    b, _ = sf.read(str(again), dtype="float32")
    assert a.shape == b.shape and (a[:3 * sr] == b[:3 * sr]).all()          # event 1 untouched
    assert not (a[3 * sr:] == b[3 * sr:]).all()


def test_cli_reroll_refuses_a_stale_edit_and_a_missing_dump(tiny_root, tmp_path, capsys):
    dump = tmp_path / "dump"
    assert main(["generate", "--models", str(tiny_root), "--instruction", TRAIN, "--duration", "10",
                 "--out", str(tmp_path / "a.wav"), "--steps", "2", "--dump", str(dump), "--quiet"]) == 0
    plan = json.loads((dump / "plan.json").read_text())
    plan["events"][0]["caption"] = "a dog barks"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(plan))
    out = tmp_path / "b.wav"
    assert main(["generate", "--models", str(tiny_root), "--plan", str(edited), "--reuse", str(dump),
                 "--reroll", "2", "--out", str(out), "--quiet"]) == 2
    assert "Events [1] were edited" in capsys.readouterr().err and not out.exists()
    assert main(["generate", "--models", str(tiny_root), "--reuse", str(tmp_path / "nope"), "--reroll", "2",
                 "--out", str(out), "--quiet"]) == 2
    assert "not a complete --dump folder" in capsys.readouterr().err and not out.exists()


def test_cli_reuse_refuses_another_story_and_an_output_inside_the_dump(tiny_root, tmp_path, capsys):
    """--reuse renders the dump's story: a different --instruction/--duration would be ignored silently, and
    --out/--dump inside the dump folder would replace what is being read; all refused before any work."""
    dump = tmp_path / "dump"
    assert main(["generate", "--models", str(tiny_root), "--instruction", TRAIN, "--duration", "10",
                 "--out", str(tmp_path / "a.wav"), "--steps", "2", "--dump", str(dump), "--quiet"]) == 0
    capsys.readouterr()
    kept = {p.name: p.read_bytes() for p in dump.iterdir()}
    reuse = ["generate", "--models", str(tiny_root), "--reuse", str(dump), "--reroll", "2", "--steps", "2", "--quiet"]
    out = tmp_path / "b.wav"
    cases = [(["--instruction", "A dog barks in the rain.", "--out", str(out)], "--instruction differs"),
             (["--duration", "20", "--out", str(out)], "--duration 20 differs from the --reuse dump's 10 s story"),
             (["--out", str(dump / "a.wav")], "lies inside the --reuse folder"),
             (["--out", str(out), "--dump", str(dump)], "lies inside the --reuse folder")]
    for extra, words in cases:
        assert main(reuse + extra) == 2, extra
        err = capsys.readouterr().err
        assert words in err, err
        assert not out.exists() and {p.name: p.read_bytes() for p in dump.iterdir()} == kept
    # the same instruction and duration as the dump (an edited earlier command line) are fine
    from argparse import Namespace

    from audiostory_core.cli.main import check_reuse_story

    check_reuse_story(Namespace(reuse=str(dump), instruction=TRAIN, duration=10.0))


# ---------------------------------------------------------------- sampler node logic (no ComfyUI)
def _node_reroll_logic():
    """``nodes/event_rows.py`` imported as ComfyUI imports the pack (a sub-package), without ComfyUI."""
    import importlib
    import sys
    import types
    from pathlib import Path

    pkg_name = "audiostory_pack_under_test"
    if pkg_name not in sys.modules:
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [str(Path(__file__).resolve().parents[1])]
        sys.modules[pkg_name] = pkg
    return tuple(importlib.import_module(f"{pkg_name}.{m}")
                 for m in ("nodes.event_rows", "nodes.values", "nodes.layout", "audiostory_core.errors"))


def test_sampler_node_rows_subset_and_merge(story):
    rl, values, layout, errors = _node_reroll_logic()     # the pack's own error classes
    ev = values.EventsBundle(tokens=story.tokens, fused=story.tokens.fused, null_embedding=torch.zeros(1, 4, 1024),
                            crossfade=3.0, audio_seq_len=story.latents.shape[1], plan=story.plan)
    prev = {"samples": layout.to_comfy_latent(story.latents)}
    assert rl.render_rows(None, "", ev) is None and rl.render_rows(None, "all", ev) is None
    with pytest.raises(errors.InputError, match="needs the previous LATENT"):
        rl.render_rows(None, "2", ev)
    assert rl.render_rows(prev, "3,1", ev) == [0, 2] and rl.render_rows(prev, "", ev) == []
    with pytest.raises(errors.InputError, match="has 2 clips but the events input has 3"):
        rl.render_rows({"samples": prev["samples"][:2]}, "1", ev)
    sub = rl.event_rows(ev, [0])
    # the first event keeps its crossfade tail although it is the only (hence last) row of the sub-batch
    assert sub.count == 1 and sub.clip_seconds == [ev.clip_seconds[0]] == [story.plan.durations[0] + 3.0]
    new = torch.full((1, 64, ev.audio_seq_len), 7.0)
    merged = rl.merge_rows(prev["samples"], [1], new)
    assert torch.equal(merged[0], prev["samples"][0]) and torch.equal(merged[2], prev["samples"][2])
    assert torch.equal(merged[1], new[0]) and not torch.equal(prev["samples"][1], new[0])
