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


def test_the_default_is_every_fast_path_and_reference_is_one_switch(shared_pipeline):
    from audiostory_core.errors import InputError
    from audiostory_core.pipeline import AudioStoryPipeline

    p = shared_pipeline                              # from_pretrained with no speed argument
    assert p.perf == PerfOptions() and not p.low_vram
    assert p.perf.plan_kwargs == {"fast": True, "static_cache": True, "compile": True}
    assert not p.perf.reference_vae and p.perf.attention_backend == "auto"
    ref = AudioStoryPipeline(p.models, reference=True).perf
    assert ref.plan_kwargs == {"fast": False, "static_cache": False, "compile": False}
    assert ref.reference_vae and ref.compile_dit is False and ref.attention_backend is None
    assert PerfOptions.from_flags(reference=True) == ref and PerfOptions.from_flags() == PerfOptions()
    assert PerfOptions.from_flags(compile=False).compile_dit is False
    assert PerfOptions.from_flags(attention="sdpa").attention_backend is None
    with pytest.raises(InputError, match="--reference runs the official computation"):
        PerfOptions.from_flags(reference=True, compile=True)
    with pytest.raises(InputError, match="either reference=True or perf"):
        AudioStoryPipeline(p.models, reference=True, perf=PerfOptions())


def test_the_default_pipeline_equals_the_reference_on_the_fixture(shared_pipeline):
    """Plan ids identical; event tokens, latents and audio within float rounding of the official path."""
    from audiostory_core.pipeline import AudioStoryPipeline

    desc, total = "A fire truck leaves the station with sirens blaring.", 7.5
    ref = AudioStoryPipeline(shared_pipeline.models, reference=True).generate(desc, total, steps=10)
    out = shared_pipeline.generate(desc, total, steps=10)
    assert out.plan.transcript_ids == ref.plan.transcript_ids and out.plan.durations == [5.0, 2.5]
    assert _rel(out.tokens.fused, ref.tokens.fused) < HIDDEN_REL
    assert _rel(out.latents, ref.latents) < 1e-4
    assert out.audio.shape == ref.audio.shape and _rel(out.audio, ref.audio) < 1e-4


def test_a_failed_compile_falls_back_to_eager_once_with_one_warning(shared_pipeline, monkeypatch):
    """Simulated: the compiled paths "apply" (as on CUDA) and torch.compile gives a function that fails."""
    import weakref

    from audiostory_core.pipeline import AudioStoryPipeline
    from audiostory_core.stages import compile_fallback, fast_decode, sampling

    calls = []

    def broken_compile(fn, **kw):
        def run(*a, **k):
            calls.append(fn)
            raise RuntimeError("simulated inductor failure: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(sampling, "compile_applies", lambda device: True)
    monkeypatch.setattr(fast_decode, "compile_applies", lambda device: True)
    monkeypatch.setattr(compile_fallback, "_FAILED", weakref.WeakKeyDictionary())
    monkeypatch.setattr(sampling, "_COMPILED", weakref.WeakKeyDictionary())
    desc, total = STORIES[1]
    ref = AudioStoryPipeline(shared_pipeline.models, reference=True).generate(desc, total, steps=4)
    with pytest.warns(compile_fallback.CompileFallbackWarning) as caught:
        out = shared_pipeline.generate(desc, total, steps=4)
    msgs = [str(w.message) for w in caught if issubclass(w.category, compile_fallback.CompileFallbackWarning)]
    assert len(msgs) == 2                         # one for the decode step, one for the DiT step
    assert all("simulated inductor failure" in m for m in msgs)
    assert any("plan-decode" in m for m in msgs) and any("DiT step" in m for m in msgs)
    assert len(calls) == 2                        # each compiled path tried once, then eager
    assert out.plan.transcript_ids == ref.plan.transcript_ids
    assert _rel(out.latents, ref.latents) < 1e-4
    import warnings
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        shared_pipeline.generate(desc, total, steps=4)
    assert not [w for w in again if issubclass(w.category, compile_fallback.CompileFallbackWarning)]
    assert len(calls) == 2                        # the next story does not try again


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
    ref = AudioStoryPipeline(shared_pipeline.models, reference=True).generate(desc, total, steps=10)
    low = AudioStoryPipeline(shared_pipeline.models, reference=True, low_vram=True).generate(desc, total, steps=10)
    assert low.plan.text() == ref.plan.text()
    assert torch.equal(low.latents, ref.latents)
    assert low.audio.shape == ref.audio.shape and _rel(low.audio, ref.audio) < 1e-5
    fast = AudioStoryPipeline(shared_pipeline.models, low_vram=True).generate(desc, total, steps=10)
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
    assert res["fast_stats"]["fallbacks"] == 0
    cols = res["columns"]
    # free decoding is timed on free steps only: fewer steps than free tokens, never the whole plan time
    assert 0 < cols["default"]["free_steps"] < res["story"]["free"]
    for c in cols.values():
        assert c["free_steps"] == cols["default"]["free_steps"]
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
