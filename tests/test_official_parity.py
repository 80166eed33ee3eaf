"""Parity with the OFFICIAL AudioStory sampler, against an output the official code wrote.

``tests/data/official_flux_t5_latents.safetensors`` holds the fire-truck story's fused event tokens
and the latents that ``Flux_T5.inference_flow_full_tokens`` (TencentARC/AudioStory 899d4f97) made
from them on the shared tiny fixture, one event at a time as ``evaluate/inference.py`` does.
How it was made: tests/data/README.md.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

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
    torch.testing.assert_close(toks.fused, ref["fused"], rtol=0, atol=1e-6)
