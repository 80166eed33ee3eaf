"""Fast paths equal the reference computation (no timing assertions here).

Tolerances (fp32, CPU): the fast decode must give the *same token ids and plan text*; its hidden
states differ from the reference loop only by float rounding (measured max abs ~3e-6 on states of
magnitude ~5, i.e. ~3e-7 relative), so 1e-4 absolute / 1e-5 relative is asserted. Chunked and
trimmed VAE decodes: 1e-5 relative to the full decode (measured ~4e-7).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from audiostory_core.stages.fast_decode import ScriptedTokens
from audiostory_core.stages.fast_vae import decode_chunked, decode_clips_fast
from audiostory_core.perf import PerfOptions
from audiostory_core.stages.plan import generate_plan

STORIES = [("A thunderstorm rolls over a quiet farm at night.", 12.0),
           ("A fire truck leaves the station with sirens blaring.", 7.5),
           ("A busy morning in a small city cafe.", 14.0)]
HIDDEN_ABS, HIDDEN_REL = 1e-4, 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("desc,total", STORIES)
@pytest.mark.parametrize("opts", [dict(fast=True), dict(fast=True, static_cache=True), dict(static_cache=True),
                                  dict(fast=True, static_cache=True, compile=True)])
def test_fast_decode_same_plan(shared_pipeline, desc, total, opts):
    pl = shared_pipeline.models.planner
    ref = generate_plan(pl, desc, total)
    stats = {}
    fast = generate_plan(pl, desc, total, stats=stats, **opts)
    assert fast.plan.transcript_ids == ref.plan.transcript_ids
    assert fast.plan.text() == ref.plan.text()
    assert len(fast.plan.events) >= 2
    assert fast.hidden.shape == ref.hidden.shape
    assert (fast.hidden - ref.hidden).abs().max().item() < HIDDEN_ABS
    assert _rel(fast.hidden, ref.hidden) < HIDDEN_REL
    if opts.get("fast"):
        per_event = pl.ids.n_semantic + 1 + pl.ids.n_residual + 1   # forced tokens after <t5> and <aud>
        assert stats["fallbacks"] == 0
        assert stats["block_tokens"] == per_event * len(fast.plan.events)
        assert stats["forwards"] == stats["generated"] - stats["block_tokens"]


def test_scripted_source_follows_script_and_reference(shared_pipeline):
    """A script equal to the greedy transcript reproduces it, with and without block feeding."""
    pl = shared_pipeline.models.planner
    desc, total = STORIES[2]
    ref = generate_plan(pl, desc, total)
    for fast in (False, True):
        out = generate_plan(pl, desc, total, token_source=ScriptedTokens(ref.plan.transcript_ids), fast=fast)
        assert out.plan.transcript_ids == ref.plan.transcript_ids
        assert (out.hidden - ref.hidden).abs().max().item() < HIDDEN_ABS


def test_block_check_falls_back(shared_pipeline):
    """When the source would not pick a forced token, the block is cut and decoding follows the source."""
    pl = shared_pipeline.models.planner
    desc, total = STORIES[1]
    ref = generate_plan(pl, desc, total)
    ids = list(ref.plan.transcript_ids)
    o = ids.index(pl.ids.t5_open)
    ids[o + 3] = pl.ids.gen_close           # leave the block after two queries
    script = ids[:o + 4] + [ids[-1]]         # then stop (EOS)
    stats = {}
    out = generate_plan(pl, desc, total, token_source=ScriptedTokens(script), fast=True, stats=stats)
    slow = generate_plan(pl, desc, total, token_source=ScriptedTokens(script))
    assert out.plan.transcript_ids == slow.plan.transcript_ids == script
    assert stats["fallbacks"] == 1
    assert (out.hidden - slow.hidden).abs().max().item() < HIDDEN_ABS


def test_defaults_are_reference(shared_pipeline):
    p = shared_pipeline
    assert p.perf == PerfOptions() and p.perf.reference_vae and not p.low_vram
    assert PerfOptions().plan_kwargs == {"fast": False, "static_cache": False, "compile": False}


def test_chunked_vae_equals_full(shared_pipeline):
    vae = shared_pipeline.models.vae
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 64, 176, generator=g)
    full = vae.decode(z).sample
    for chunk, overlap in ((32, 32), (50, 16), (64, 32)):
        part = decode_chunked(vae, z, chunk, overlap)
        assert part.shape == full.shape
        assert _rel(part, full) < 1e-5, (chunk, overlap)


def test_fast_vae_clips_equal_reference(shared_pipeline):
    from audiostory_core.stages.audio import decode_clips

    vae = shared_pipeline.models.vae
    lat = torch.randn(3, 176, 64, generator=torch.Generator().manual_seed(1))
    secs = [8.0, 3.5, 5.25]
    ref = decode_clips(vae, lat, secs)
    for kw in (dict(), dict(trim=False), dict(batch=1, chunk_frames=40), dict(batch=2, chunk_frames=64, overlap=16)):
        out = decode_clips_fast(vae, lat, secs, **kw)
        assert [c.shape for c in out] == [c.shape for c in ref]
        for a, b in zip(out, ref):
            assert _rel(a, b) < 1e-5, kw


def test_low_vram_and_fast_pipeline_equal_output(shared_pipeline):
    from audiostory_core.pipeline import AudioStoryPipeline

    desc, total = STORIES[2]
    ref = shared_pipeline.generate(desc, total, steps=10)
    low = AudioStoryPipeline(shared_pipeline.models, low_vram=True).generate(desc, total, steps=10)
    assert low.plan.text() == ref.plan.text()
    assert torch.equal(low.latents, ref.latents)
    assert low.audio.shape == ref.audio.shape and _rel(low.audio, ref.audio) < 1e-5
    fast = AudioStoryPipeline(shared_pipeline.models, perf=PerfOptions.fast(), low_vram=True).generate(
        desc, total, steps=10)
    assert fast.plan.text() == ref.plan.text()
    assert _rel(fast.latents, ref.latents) < 1e-4
    assert fast.audio.shape == ref.audio.shape and _rel(fast.audio, ref.audio) < 1e-4


def test_bench_tiny_end_to_end(tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from benchmarks.bench_pipeline import STAGES, main

    res = main(["--size", "tiny", "--steps", "8", "--workdir", str(tmp_path), "--low-vram",
                "--json", str(tmp_path / "bench.json")])
    table = res["table"]
    for stage in STAGES + ("free decoding", "peak", "cold start"):
        assert f"| {stage}" in table, stage
    assert "library default (s)" in table and "official way (s)" in table
    assert res["parity"]["plan_ids_equal"] and res["parity"]["plan_text_equal"]
    assert res["parity"]["events"] == 5
    assert res["parity"]["latents_rel_err"] < 1e-4 and res["parity"]["audio_rel_err"] < 1e-4
    assert res["parity"]["default_audio_rel_err"] < 1e-4
    assert res["fast_stats"]["fallbacks"] == 0
    cols = res["columns"]
    # free decoding is timed on free steps only: fewer steps than free tokens, never the whole plan time
    assert 0 < cols["fast"]["free_steps"] < res["story"]["free"]
    for c in cols.values():
        assert c["free_steps"] == cols["fast"]["free_steps"]
        assert c["free_tps"] > res["story"]["free"] / c["times"]["plan decode"]
    assert len({c["mem_gb"] for c in cols.values()}) > 1          # measured per column, not one number
    assert (tmp_path / "bench.json").is_file()
    assert "| total |" in capsys.readouterr().out


def test_bench_parity_refuses_different_shapes():
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from benchmarks.bench_pipeline import rel_err

    with pytest.raises(AssertionError, match="shapes differ"):
        rel_err(torch.ones(2, 100), torch.ones(2, 120), "audio")
    assert rel_err(torch.ones(3), torch.ones(3)) == 0.0
