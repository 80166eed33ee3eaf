"""The headless CLI end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from audiostory_core.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def test_generate_with_dump(tiny_root, tmp_path):
    out, dump = tmp_path / "story.wav", tmp_path / "dump"
    rc = main(["generate", "--models", str(tiny_root), "--instruction", "A train arrives and leaves.",
               "--duration", "10", "--out", str(out), "--noise", "reference", "--steps", "5", "--dump", str(dump),
               "--quiet"])
    assert rc == 0
    plan = json.loads((dump / "plan.json").read_text())
    assert [e["duration"] for e in plan["events"]] == [3.0, 3.5, 3.5]
    toks = load_file(str(dump / "tokens.safetensors"))
    assert toks["semantic"].shape == (3, 4, 1024) and toks["residual"].shape == (3, 2, 1024)
    assert toks["fused"].shape == (3, 4, 1024)
    assert load_file(str(dump / "latents.safetensors"))["latents"].shape == (3, 176, 64)
    import soundfile as sf
    info = sf.info(str(out))
    assert info.samplerate == 32000 and info.channels == 2 and info.frames == 10 * 32000
    assert (dump / "story.wav").read_bytes() == out.read_bytes()


def test_generate_from_an_edited_plan(tiny_root, tmp_path, capsys):
    assert main(["plan", "--models", str(tiny_root), "--instruction", "A train arrives and leaves.",
                 "--duration", "10"]) == 0
    plan = json.loads(capsys.readouterr().out)
    plan["events"][0]["duration"] = 4.0
    plan["events"][0]["caption"] = "a bell rings at the station"
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(plan))
    out = tmp_path / "edited.flac"
    assert main(["generate", "--models", str(tiny_root), "--plan", str(f), "--out", str(out), "--steps", "3",
                 "--sample-rate", "44100", "--quiet"]) == 0
    import soundfile as sf
    assert sf.info(str(out)).frames == 11 * 44100


def test_bad_inputs_fail_clearly_and_write_nothing(tiny_root, tmp_path, capsys):
    out = tmp_path / "x.wav"
    assert main(["generate", "--models", str(tmp_path / "nope"), "--instruction", "a", "--duration", "5",
                 "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--models", str(tiny_root), "--instruction", " ", "--duration", "5",
                 "--out", str(out)]) == 2
    assert "instruction is empty" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [{"caption": "x", "duration": 60}]}')
    assert main(["generate", "--models", str(tiny_root), "--plan", str(bad), "--out", str(out)]) == 2
    assert "longer than one clip" in capsys.readouterr().err
    assert not out.exists()


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "audiostory_core", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "generate" in r.stdout


def test_download_without_network_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "--models", str(tmp_path), "--only", "audiostory"]) == 2
    err = capsys.readouterr().err
    assert "TencentARC/AudioStory-3B" in err and str(tmp_path / "AudioStory-3B") in err


def test_cli_matches_the_library_on_the_shared_fixture(shared_root, shared_pipeline, tmp_path):
    dump = tmp_path / "d"
    assert main(["generate", "--models", str(shared_root), "--instruction",
                 "A fire truck leaves the station with sirens blaring.", "--duration", "7.5", "--out",
                 str(tmp_path / "s.wav"), "--noise", "reference", "--dump", str(dump), "--quiet"]) == 0
    res = shared_pipeline.generate("A fire truck leaves the station with sirens blaring.", 7.5, noise="reference")
    torch.testing.assert_close(load_file(str(dump / "latents.safetensors"))["latents"], res.latents)


def test_default_run_equals_the_reference_run_and_reference_is_the_official_computation(shared_root, shared_pipeline,
                                                                                        tmp_path):
    """``--reference`` is exactly the library's official path (the one test_official_parity checks against
    the stored official output); the default (fast) run gives the same plan ids and the same story within
    float rounding (tolerances of tests/test_fast_paths.py)."""
    from audiostory_core.pipeline import AudioStoryPipeline

    story = ["--instruction", "A fire truck leaves the station with sirens blaring.", "--duration", "7.5",
             "--noise", "reference", "--steps", "50", "--quiet"]
    runs = {}
    for name, extra in (("reference", ["--reference"]), ("default", [])):
        dump = tmp_path / name
        assert main(["generate", "--models", str(shared_root), "--out", str(tmp_path / f"{name}.wav"),
                     "--dump", str(dump)] + story + extra) == 0
        runs[name] = {"plan": json.loads((dump / "plan.json").read_text()),
                      "fused": load_file(str(dump / "tokens.safetensors"))["fused"],
                      "latents": load_file(str(dump / "latents.safetensors"))["latents"]}
    official = AudioStoryPipeline(shared_pipeline.models, reference=True).generate(
        "A fire truck leaves the station with sirens blaring.", 7.5, noise="reference", steps=50)
    assert torch.equal(runs["reference"]["latents"], official.latents.cpu())
    stored = load_file(str(REPO / "tests" / "data" / "official_flux_t5_latents.safetensors"))
    assert runs["reference"]["latents"].shape == stored["latents"].shape == (2, 176, 64)
    ref, fast = runs["reference"], runs["default"]
    assert fast["plan"]["events"] == ref["plan"]["events"]
    assert fast["plan"]["transcript_ids"] == ref["plan"]["transcript_ids"]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(fast["fused"], ref["fused"]) < 1e-5
    assert rel(fast["latents"], ref["latents"]) < 1e-4
    # the official output, planned here (measured 1.4e-5: the stored file was made under transformers 4.57,
    # whose planner states differ from 5.x by ~1.7e-5 in the fused tokens; the sampler alone: 2e-6)
    assert (ref["latents"] - stored["latents"]).abs().max() < 5e-5


def test_contradicting_speed_switches_are_refused_before_loading(tmp_path, capsys):
    assert main(["generate", "--models", str(tmp_path / "none"), "--instruction", "a train", "--duration", "5",
                 "--out", str(tmp_path / "x.wav"), "--reference", "--compile"]) == 2
    assert "--reference runs the official computation" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
