"""Parity with the OFFICIAL AudioStory sampler, against an output the official code wrote.

``tests/data/official_flux_t5_latents.safetensors`` holds the fire-truck story's fused event tokens
and the latents that ``Flux_T5.inference_flow_full_tokens`` (TencentARC/AudioStory 899d4f97) made
from them on the shared tiny fixture, one event at a time as ``evaluate/inference.py`` does.
How it was made: tests/data/README.md.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from audiostory_core.stages.plan import StoryPlan
from audiostory_core.stages.sampling import sample_latents

DATA = Path(__file__).parent / "data" / "official_flux_t5_latents.safetensors"


def test_stored_output_names_the_official_commit():
    with safe_open(str(DATA), "pt") as f:
        meta = f.metadata()
    assert meta["official_commit"].startswith("899d4f97")
    assert meta["instruction"] == "A fire truck leaves the station with sirens blaring."


def test_batched_reference_sampler_matches_the_official_flux_t5(shared_pipeline):
    ref = load_file(str(DATA))
    m = shared_pipeline.models
    ours = sample_latents(m.dit, ref["fused"], m.null_embedding, ref["seconds"].tolist(), steps=50,
                          guidance=4.0, noise="reference")
    assert ours.shape == ref["latents"].shape == (2, 176, 64)
    assert ref["latents"].abs().max() > 1.0          # a real signal, not zeros
    assert (ours - ref["latents"]).abs().max() < 1e-5   # measured 2.0e-6 (float rounding, batch of 2 vs 1)


def test_the_fixture_story_still_gives_the_stored_fused_tokens(shared_pipeline):
    from audiostory_core.pipeline import AudioStoryPipeline

    official = AudioStoryPipeline(shared_pipeline.models, reference=True)   # --reference
    res = official.plan("A fire truck leaves the station with sirens blaring.", 7.5)
    toks = official.tokens(res)
    ref = load_file(str(DATA))
    assert res.plan.durations == [5.0, 2.5]
    assert torch.equal(ref["seconds"], torch.tensor([8.0, 2.5]))
    # Stored with transformers 4.57; transformers 5.25 moves the planner states by 1.65e-5 (measured on this
    # fixture, also with eager attention). The sampler parity below still holds at < 1e-5 on the stored tokens.
    torch.testing.assert_close(toks.fused, ref["fused"], rtol=0, atol=5e-5)


def _seconds_reaching_the_dit(pipe, monkeypatch) -> list[list[float]]:
    """Spy on the DiT's duration embedder: the seconds each DiT call is conditioned on."""
    seen: list[list[float]] = []
    emb = pipe.models.dit.duration_embedder
    real = emb.forward

    def spy(seconds):
        seen.append([float(s) for s in seconds.flatten().tolist()])
        return real(seconds)

    monkeypatch.setattr(emb, "forward", spy)
    return seen


def test_public_pipeline_from_the_fixture_plan_matches_the_official_latents(shared_pipeline):
    """plan -> tokens -> sample through the library's own duration path (event seconds + 3 s crossfade),
    compared with what the official Flux_T5 wrote for the same story.

    The sampler gets the stored fused tokens (the official input) so that the < 1e-5 bound measures the
    duration path and the sampler only; the planner's own tokens drift from the stored ones by up to
    1.7e-5 under transformers 5.25 (written with 4.57), which moves the latents by 1.4e-5 (measured)."""
    ref = load_file(str(DATA))
    res = shared_pipeline.plan("A fire truck leaves the station with sirens blaring.", 7.5)
    toks = shared_pipeline.tokens(res)
    assert toks.durations == [5.0, 2.5]
    ours = shared_pipeline.sample(replace(toks, fused=ref["fused"]), crossfade=3.0, steps=50, guidance=4.0,
                                  noise="reference")
    assert ours.shape == ref["latents"].shape == (2, 176, 64)
    assert (ours - ref["latents"]).abs().max() < 1e-5     # the same bound as the sampler-only test
    own = shared_pipeline.sample(toks, crossfade=3.0, steps=50, guidance=4.0, noise="reference")
    assert (own - ref["latents"]).abs().max() < 1e-4      # the planner's own tokens, end to end


def test_the_dit_is_conditioned_on_event_seconds_plus_the_crossfade_except_the_last(shared_pipeline, monkeypatch):
    """Hand-worked: durations [5.0, 2.5] with a 3 s crossfade -> the DiT sees [8.0, 2.5] (official rule:
    every clip but the last carries the crossfade tail)."""
    plan = StoryPlan.from_json('{"instruction": "Sirens. The total duration is 7.5 seconds.", "reasoning": "two",'
                               ' "events": [{"caption": "a siren", "duration": 5.0},'
                               ' {"caption": "a horn", "duration": 2.5}]}')
    seen = _seconds_reaching_the_dit(shared_pipeline, monkeypatch)
    shared_pipeline.sample(shared_pipeline.tokens(plan), crossfade=3.0, steps=1, guidance=4.0, noise="reference")
    # one batched CFG call (conditional rows, then unconditional rows), each event with its own seconds
    assert seen == [[8.0, 2.5, 8.0, 2.5]]
