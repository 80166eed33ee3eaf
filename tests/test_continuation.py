"""Audio continuation: Whisper features -> whisper_resampler_llava -> placeholder embeddings -> plan -> join.

Whisper is a tiny random encoder (d_model 32, the shared checkpoint's resampler input width) saved to a
folder in the test; planner, DiT and VAE are the shared tiny checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audiostory_core.tasks.continuation import (PlaceholderLayout, ResamplerSpec, WhisperFeatures,
                                          build_audio_context, check_input_audio,
                                          continue_audio, load_audio_file, load_resampler, resampler_status,
                                          whisper_window)
from audiostory_core.errors import InputError, ModelFilesError
from audiostory_core.models.loading import Checkpoint
from audiostory_core.stages.plan import embed_prompt, generate_plan
from synthetic_media import tone, write_video
from tiny_media_models import build_tiny_whisper

# An instruction the tiny planner was trained on: it writes 3 clean events (12 s) even with audio tokens.
STORY = ("A thunderstorm rolls over a quiet farm at night.", 12.0)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("models") / "whisper-tiny")


@pytest.fixture(scope="module")
def whisper(whisper_dir):
    return WhisperFeatures.from_pretrained(whisper_dir.name, search_dirs=[whisper_dir.parent])


@pytest.fixture(scope="module")
def tensors(shared_pipeline):
    return Checkpoint(shared_pipeline.models.paths.checkpoint).tensors


@pytest.fixture(scope="module")
def clip():
    """4 s of a stereo 44.1 kHz tone: the input to continue."""
    return check_input_audio(tone(4.0, 44100), 44100)


# ---------------------------------------------------------------- input checks
def test_input_audio_rules():
    with pytest.raises(InputError, match="no samples"):
        check_input_audio(torch.zeros(2, 0), 44100)
    with pytest.raises(InputError, match="8 channels.*-ac 2"):
        check_input_audio(tone(1.0, 48000, channels=8), 48000)
    with pytest.raises(InputError, match="silent"):
        check_input_audio(torch.zeros(2, 44100), 44100)
    with pytest.raises(InputError, match="outside the supported"):
        check_input_audio(tone(1.0, 4000), 4000)
    mono = check_input_audio(tone(1.0, 44100, channels=1), 44100)          # handled: upmixed in the join
    assert mono.wave.shape[0] == 1 and any("mono" in n for n in mono.notes)
    low = check_input_audio(tone(1.0, 8000), 8000)                         # handled: resampled, with a note
    assert any("8000 Hz" in n for n in low.notes)
    high = check_input_audio(tone(1.0, 192000), 192000)
    assert whisper_window(high).shape == (16000,)


def test_inputs_longer_than_the_window_are_refused_or_cut_to_the_last_30_s():
    long = check_input_audio(tone(31.0, 16000, channels=1), 16000)
    with pytest.raises(InputError, match="longer than the 30 s Whisper window"):
        whisper_window(long)
    assert whisper_window(long, "last").shape == (30 * 16000,)


def test_files_without_audio_are_refused(tmp_path):
    v = write_video(tmp_path / "silent_film.mp4", cuts=[], duration=1.0, audio=False)
    with pytest.raises(InputError, match="no audio stream"):
        load_audio_file(v)
    wave, sr = load_audio_file(write_video(tmp_path / "with_sound.mkv", cuts=[], duration=1.0))
    assert sr == 48000 and wave.shape[0] == 2 and abs(wave.shape[1] - 48000) < 2000


# ---------------------------------------------------------------- understanding
def test_resampler_pools_to_token_num_and_projects_to_the_llm_width(shared_pipeline, tensors):
    spec = ResamplerSpec.from_config(shared_pipeline.models.config.raw)
    assert (spec.token_num, spec.ori_embed_dim, spec.tgt_embed_dim) == (4, 32, 64)
    res = load_resampler(spec, tensors, llm_width=64)
    w = tensors["seedx.whisper_resampler_llava.aud_projector.0.weight"]
    assert torch.equal(res.aud_projector[0].weight, w)                     # weights from the checkpoint
    feats = torch.randn(1, 1500, 32)
    pooled = feats.reshape(1, 4, 375, 32).mean(2)                          # AdaptiveAvgPool2d((4, 32))
    expected = res.aud_projector[2](torch.nn.functional.gelu(res.aud_projector[0](pooled)))
    assert torch.allclose(res(feats), expected, atol=1e-6)


def test_checkpoints_without_trained_weights_are_reported(shared_pipeline, tensors):
    spec = ResamplerSpec.from_config(shared_pipeline.models.config.raw)
    assert resampler_status(spec, tensors)[0] == "trained"
    fresh = dict(tensors)
    for k in ("aud_projector.0.bias", "aud_projector.2.bias"):
        fresh["seedx.whisper_resampler_llava." + k] = torch.zeros(64)
    assert resampler_status(spec, fresh)[0] == "untrained"
    gone = {k: v for k, v in tensors.items() if "whisper_resampler" not in k}
    assert resampler_status(spec, gone)[0] == "missing"


def test_whisper_features_overwrite_the_placeholder_embeddings(shared_pipeline, tensors, whisper, clip):
    planner = shared_pipeline.models.planner
    ctx = build_audio_context(planner, clip, checkpoint_tensors=tensors, whisper=whisper)
    assert ctx.mode == "whisper" and ctx.embeds.shape == (4, 64) and ctx.instruction_prefix == ""
    pc = ctx.prompt_context(planner.tokenizer, "Continue the storm. The total duration is 12.0 seconds.")
    tok = planner.tokenizer
    assert [tok.convert_ids_to_tokens(pc.prompt_ids[p]) for p in pc.positions] == \
        ["<aud_00000>", "<aud_00001>", "<aud_00002>", "<aud_00003>"]
    assert tok.convert_ids_to_tokens(pc.prompt_ids[pc.positions[0] - 1]) == "<aud>"
    emb = embed_prompt(planner.llm, torch.tensor([pc.prompt_ids]), pc)[0]
    assert torch.equal(emb[pc.positions], ctx.embeds)
    others = [i for i in range(len(pc.prompt_ids)) if i not in pc.positions]
    plain = planner.llm.get_input_embeddings()(torch.tensor(pc.prompt_ids))
    assert torch.equal(emb[others], plain[others])


def test_the_placeholder_layout_is_configurable(shared_pipeline, tensors, whisper, clip):
    planner = shared_pipeline.models.planner
    layout = PlaceholderLayout(open="", slot="<video_padding>", close="", position="after")
    ctx = build_audio_context(planner, clip, checkpoint_tensors=tensors, whisper=whisper, layout=layout)
    pc = ctx.prompt_context(planner.tokenizer, "Go on.")
    assert {planner.tokenizer.convert_ids_to_tokens(pc.prompt_ids[p]) for p in pc.positions} == {"<video_padding>"}
    assert pc.positions == list(range(pc.positions[0], pc.positions[0] + 4))


def test_audio_changes_the_plan_states(shared_pipeline, tensors, whisper, clip):
    planner = shared_pipeline.models.planner
    loud = check_input_audio(tone(4.0, 44100, freq=2000.0, amp=0.9), 44100)
    a = build_audio_context(planner, clip, checkpoint_tensors=tensors, whisper=whisper)
    b = build_audio_context(planner, loud, checkpoint_tensors=tensors, whisper=whisper)
    assert not torch.allclose(a.embeds, b.embeds)
    full = "A thunderstorm rolls over a quiet farm at night. The total duration is 12.0 seconds."
    ra = generate_plan(planner, *STORY, max_new_tokens=5, context=a.prompt_context(planner.tokenizer, full))
    rb = generate_plan(planner, *STORY, max_new_tokens=5, context=b.prompt_context(planner.tokenizer, full))
    assert ra.prompt_ids == rb.prompt_ids and not torch.allclose(ra.hidden, rb.hidden)


def test_untrained_checkpoint_says_so_and_falls_back_to_a_description(shared_pipeline, tensors, whisper, clip):
    planner = shared_pipeline.models.planner
    fresh = {k: (torch.zeros_like(v) if k.endswith("bias") and "whisper_resampler" in k else v)
             for k, v in tensors.items()}
    with pytest.raises(InputError, match="no trained audio-understanding weights.*Describe the input"):
        build_audio_context(planner, clip, checkpoint_tensors=fresh, whisper=whisper)
    with pytest.raises(ModelFilesError, match="cannot listen"):
        build_audio_context(planner, clip, checkpoint_tensors=fresh, whisper=whisper, mode="whisper")
    ctx = build_audio_context(planner, clip, checkpoint_tensors=fresh, whisper=whisper,
                              description="rain on a farmhouse roof")
    assert ctx.mode == "text" and ctx.context is None and ctx.embeds is None
    assert ctx.instruction_prefix == "The input audio contains rain on a farmhouse roof. "
    assert any("no trained audio-understanding weights" in n for n in ctx.notes)


def test_missing_whisper_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(ModelFilesError, match="whisper-large-v3"):
        WhisperFeatures.from_pretrained("whisper-large-v3", search_dirs=[tmp_path])


# ---------------------------------------------------------------- output
def test_continuation_starts_where_the_input_ends(shared_pipeline, tensors, whisper, clip):
    ctx = build_audio_context(shared_pipeline.models.planner, clip, checkpoint_tensors=tensors, whisper=whisper)
    res = continue_audio(shared_pipeline, ctx, *STORY, steps=2, crossfade=3.0)
    assert res.plan_result.plan.durations == [4.0, 3.5, 4.5]
    sr, n = res.sample_rate, 3 * res.sample_rate
    from audiostory_core.stages.audio import resample

    inp = resample(clip.wave, 44100, sr)
    story = res.continuation
    assert res.audio.shape[-1] == inp.shape[-1] + story.shape[-1] - n
    head = inp.shape[-1] - n
    assert torch.equal(res.audio[:, :head], inp[:, :head])                             # the input, untouched
    fade = torch.linspace(0, 1, n)
    assert torch.allclose(res.audio[:, head:head + n], inp[:, head:] * (1 - fade) + story[:, :n] * fade, atol=1e-6)
    assert torch.equal(res.audio[:, head + n:], story[:, n:])                          # then the continuation

    alone = continue_audio(shared_pipeline, ctx, *STORY, steps=2, crossfade=3.0, output="continuation")
    assert torch.equal(alone.audio, story)


def test_mono_input_is_joined_to_a_stereo_continuation(shared_pipeline, tensors, whisper):
    mono = check_input_audio(tone(2.0, 22050, channels=1), 22050)
    ctx = build_audio_context(shared_pipeline.models.planner, mono, checkpoint_tensors=tensors, whisper=whisper)
    res = continue_audio(shared_pipeline, ctx, *STORY, steps=1, crossfade=1.0)
    assert res.audio.shape[0] == 2 and torch.equal(res.audio[0, :16000], res.audio[1, :16000])


def test_cli_continue(shared_root, whisper_dir, tmp_path, monkeypatch):
    import soundfile as sf

    from audiostory_core.cli.main import main

    monkeypatch.setenv("AUDIOSTORY_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "in.flac"
    sf.write(str(src), tone(3.0, 48000).numpy().T, 48000)
    out = tmp_path / "out.wav"
    rc = main(["continue", "--models", str(shared_root), "--audio", str(src), "--instruction", STORY[0],
               "--duration", str(STORY[1]), "--out", str(out), "--whisper", str(whisper_dir), "--steps", "1",
               "--device", "cpu", "--quiet"])
    data, sr = sf.read(str(out))
    assert rc == 0 and sr == 32000 and abs(len(data) - (3.0 + 12.0 - 3.0) * sr) <= 1
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(48000, np.float32), 48000)
    rc = main(["continue", "--models", str(shared_root), "--audio", str(silent), "--instruction", "x",
               "--duration", "5", "--out", str(tmp_path / "never.wav"), "--device", "cpu", "--quiet"])
    assert rc == 2 and not (tmp_path / "never.wav").exists()


def _planner_inputs(planner):
    """Spy on the LLM: the input embeddings of every forward that gets embeddings (prompt, teacher forcing)."""
    seen: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            seen.append(kwargs["inputs_embeds"][0].detach().clone())

    return seen, planner.llm.model.register_forward_pre_hook(grab, with_kwargs=True)


def test_continuation_feeds_the_input_audio_to_the_planner(shared_pipeline, tensors, whisper, clip):
    """What reaches the LLM at the audio placeholder slots is the Whisper features of THIS clip: two
    different clips give different planner inputs there, and the same text everywhere else."""
    planner = shared_pipeline.models.planner
    tok = planner.tokenizer
    loud = check_input_audio(tone(4.0, 44100, freq=2000.0, amp=0.9), 44100)
    got = {}
    for name, audio in (("tone", clip), ("loud", loud)):
        ctx = build_audio_context(planner, audio, checkpoint_tensors=tensors, whisper=whisper)
        seen, hook = _planner_inputs(planner)
        try:
            res = continue_audio(shared_pipeline, ctx, *STORY, steps=1, crossfade=3.0, output="continuation")
        finally:
            hook.remove()
        prompt = res.plan_result.prompt_ids
        slots = [i for i, t in enumerate(tok.convert_ids_to_tokens(prompt)) if t.startswith("<aud_0")]
        assert len(slots) == ctx.embeds.shape[0] == 4
        assert seen, "the planner was never given input embeddings"
        for emb in seen:            # the plan prompt and the teacher-forced event-token pass
            assert torch.equal(emb[slots], ctx.embeds.to(emb.dtype))
        assert "The input audio contains" not in tok.decode(prompt)      # no silent text fallback
        assert not any("instead" in p for p in res.problems)
        got[name] = (seen[0], slots)
    (a, slots), (b, _) = got["tone"], got["loud"]
    assert not torch.allclose(a[slots], b[slots])
    rest = [i for i in range(a.shape[0]) if i not in slots]
    assert torch.equal(a[rest], b[rest])


class _Stop(Exception):
    pass


def test_the_text_fallback_is_used_only_when_asked(shared_pipeline, tensors, whisper, clip, monkeypatch):
    """Text mode (asked for): the description goes into the instruction and no audio slot is in the prompt."""
    import audiostory_core.tasks.continuation as cont

    planner = shared_pipeline.models.planner
    ctx = build_audio_context(planner, clip, checkpoint_tensors=tensors, whisper=whisper, mode="text",
                              description="rain on a farmhouse roof")
    asked = {}

    def spy(planner, description, duration, *, context=None, **kw):
        asked.update(description=description, context=context)
        raise _Stop

    monkeypatch.setattr(cont, "generate_plan", spy)
    with pytest.raises(_Stop):
        continue_audio(shared_pipeline, ctx, *STORY, steps=1, crossfade=3.0, output="continuation")
    assert asked == {"description": "The input audio contains rain on a farmhouse roof. " + STORY[0], "context": None}
