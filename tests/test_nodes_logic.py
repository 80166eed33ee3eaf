"""Node logic without ComfyUI: value objects, validation, layouts, memory, saving, text streaming."""
from __future__ import annotations

import importlib
import json
import sys
import types

import pytest
import torch

from conftest import PACK_UNDER_TEST, register_pack

PKG = PACK_UNDER_TEST


NODE_MODULES = ("values", "model_roots", "input_checks", "layout", "story_memory", "save", "dtypes_memory",
                "streaming", "scenes", "audio_context", "event_rows", "peaks")


@pytest.fixture(scope="module")
def nodes():
    """The pack's ComfyUI-free node modules, imported the way ComfyUI imports the pack (a sub-package)."""
    register_pack()
    return types.SimpleNamespace(**{m: importlib.import_module(f"{PKG}.nodes.{m}") for m in NODE_MODULES})


@pytest.fixture(scope="module")
def core(nodes):
    return importlib.import_module(f"{PKG}.audiostory_core")


def _plan(core, durations=(4.0, 3.5)):
    from_dict = importlib.import_module(f"{PKG}.audiostory_core.stages.plan").StoryPlan.from_dict
    return from_dict({"instruction": "x. The total duration is 7.5 seconds.", "reasoning": "r",
                      "events": [{"caption": f"event {i}", "duration": d} for i, d in enumerate(durations)]})


def test_core_imports_no_comfy(nodes):
    assert not any(m == "comfy" or m.startswith("comfy.") for m in sys.modules), "core/logic imported ComfyUI"


def test_seconds_bits_roundtrip(nodes):
    secs = [3.3, 7.0, 4.123456789]
    bits = nodes.layout.seconds_to_bits(secs)
    assert bits.dtype == torch.int32
    back = nodes.layout.bits_to_seconds(bits)
    assert torch.equal(back, torch.tensor(secs, dtype=torch.float32))
    # integer tensors are not cast by ComfyUI's convert_tensor: repeat/concat keep the values exact
    assert torch.equal(nodes.layout.bits_to_seconds(torch.cat([bits, bits])),
                       torch.tensor(secs * 2, dtype=torch.float32))


def test_latent_layout(nodes):
    x = torch.randn(3, 176, 64)
    c = nodes.layout.to_comfy_latent(x)          # core [E, T, 64] -> ComfyUI's audio layout [E, 64, T]
    assert c.shape == (3, 64, 176) and c[1, 5, 7] == x[1, 7, 5] and c.is_contiguous()


def _events(nodes, core, durations=(4.0, 3.5), crossfade=3.0):
    et = importlib.import_module(f"{PKG}.audiostory_core.stages.event_tokens")
    e = len(durations)
    toks = et.EventTokens(semantic=torch.randn(e, 8, 1024), residual=torch.randn(e, 4, 1024),
                          fused=torch.randn(e, 8, 1024), durations=list(durations))
    return nodes.values.EventsBundle(tokens=toks, fused=toks.fused, null_embedding=torch.randn(1, 8, 1024),
                                       crossfade=crossfade, audio_seq_len=176)


def test_conditioning_and_empty_latent(nodes, core):
    ev = _events(nodes, core)
    pos, neg = nodes.layout.conditioning_pair(ev)
    assert pos[0][0].shape == (2, 8, 1024) and neg[0][0].shape == (2, 8, 1024)
    assert torch.equal(neg[0][0][1], ev.null_embedding[0])
    assert torch.equal(nodes.layout.bits_to_seconds(pos[0][1]["audiostory_seconds"]), torch.tensor([7.0, 3.5]))
    assert torch.equal(pos[0][1]["audiostory_seconds"], neg[0][1]["audiostory_seconds"])
    lat = nodes.layout.empty_latent(ev)
    assert lat["type"] == "audio" and lat["samples"].shape == (2, 64, 176) and not lat["samples"].any()
    nodes.layout.check_latent_matches(lat["samples"], ev)
    with pytest.raises(Exception, match="3 clips but the events input has 2"):
        nodes.layout.check_latent_matches(torch.zeros(3, 64, 176), ev)


def test_clip_length_check(nodes):
    nodes.input_checks.check_clip_lengths([4.0, 5.0], 3.0, 8.17)
    with pytest.raises(Exception, match=r"event 1: 8.50 s .*8.17 s"):
        nodes.input_checks.check_clip_lengths([5.5, 2.0], 3.0, 8.17)
    with pytest.raises(Exception, match="crossfade"):
        nodes.input_checks.check_clip_lengths([1.0], -1.0, 8.0)


def test_plan_json_errors(nodes):
    with pytest.raises(Exception, match="line 2, column"):
        nodes.input_checks.parse_plan_json('{\n  "events": [,]}')
    with pytest.raises(Exception, match="empty"):
        nodes.input_checks.parse_plan_json("   ")
    with pytest.raises(Exception, match=r"events\[0\].duration"):
        nodes.input_checks.parse_plan_json(json.dumps({"events": [{"caption": "a", "duration": -1}]}))
    plan = nodes.input_checks.parse_plan_json(json.dumps({"instruction": "i", "reasoning": "r",
                                             "events": [{"caption": "a", "duration": 2}]}))
    assert plan.durations == [2.0]


def test_validate_plan_inputs(nodes):
    assert nodes.input_checks.validate_plan_inputs("a story", 12.0, 1600) is None
    assert "empty" in nodes.input_checks.validate_plan_inputs("  ", 12.0, 1600)
    assert "total_duration" in nodes.input_checks.validate_plan_inputs("a", 0.0, 1600)
    assert "total_duration" in nodes.input_checks.validate_plan_inputs("a", 601.0, 1600)
    assert "max_new_tokens" in nodes.input_checks.validate_plan_inputs("a", 5.0, 0)      # the core's 1..32768
    assert "max_new_tokens" in nodes.input_checks.validate_plan_inputs("a", 5.0, 32769)
    assert nodes.input_checks.validate_plan_inputs(None, None, None) is None   # linked inputs are checked at run time


def test_model_roots(nodes, tmp_path, shared_root):
    base = tmp_path / "audiostory"
    base.mkdir()
    (base / "AudioStory").symlink_to(shared_root)
    (base / "not_a_model").mkdir()
    assert nodes.model_roots.list_model_roots([str(base), str(tmp_path / "missing")]) == ["AudioStory"]
    assert nodes.model_roots.resolve_model_root([str(base)], "AudioStory") == base / "AudioStory"
    with pytest.raises(Exception, match="was not found"):
        nodes.model_roots.resolve_model_root([str(base)], "Other")
    with pytest.raises(Exception, match="Invalid"):
        nodes.model_roots.resolve_model_root([str(base)], "../x")
    message = nodes.model_roots.no_roots_message([])
    assert "models/audiostory" in message or "audiostory" in message


def test_dtype_choice(nodes):
    assert nodes.dtypes_memory.dtype_from_choice("auto") is None
    assert nodes.dtypes_memory.dtype_from_choice("bf16") is torch.bfloat16
    with pytest.raises(Exception):
        nodes.dtypes_memory.dtype_from_choice("fp8")


def test_memory_paths_and_modes(nodes, core, tmp_path):
    f = nodes.story_memory.memory_file(str(tmp_path), "audiostory/memory/story")
    assert f == tmp_path / "audiostory/memory/story.safetensors"
    for bad in ("/etc/x", "../x", "a/../../x", ""):
        with pytest.raises(Exception):
            nodes.story_memory.memory_file(str(tmp_path), bad)
    empty = nodes.story_memory.memory_for("new", None, None, 4, 0.5)
    assert empty.is_empty and empty.window == 4
    with pytest.raises(Exception, match="needs a memory input"):
        nodes.story_memory.memory_for("save", None, f, 4, 0.5)
    with pytest.raises(Exception, match="does not exist"):
        nodes.story_memory.memory_for("load", None, f, 4, 0.5)
    plan = _plan(core, (4.0, 3.5, 2.0))
    mem = empty.add_chapter(plan, torch.randn(3, 8, 1024), torch.randn(3, 4, 1024))   # the token width
    mem = mem.add_chapter(_plan(core, (5.0, 1.0)), torch.randn(2, 8, 1024), torch.randn(2, 4, 1024))
    assert len(mem.events) == 4 and mem.chapter_count == 2 and mem.remembered_chapters() == [0, 1]
    assert mem.residual_bank().shape == (16, 1024)
    saved = nodes.story_memory.memory_for("save", mem, f, 4, 0.25)
    assert f.is_file() and not list(f.parent.glob("*.part"))
    loaded = nodes.story_memory.memory_for("load", None, f, 4, 0.25)
    assert loaded.recap() == saved.recap() and loaded.strength == 0.25
    assert torch.equal(loaded.residual_bank(), saved.residual_bank())
    assert len(nodes.story_memory.memory_for("pass_through", loaded, None, 1, 0.5).events) == 1


def test_fusion_with_empty_memory_is_reference(nodes, core):
    mods = importlib.import_module(f"{PKG}.audiostory_core.models.modules")
    mem = importlib.import_module(f"{PKG}.audiostory_core.tasks.memory")
    torch.manual_seed(0)
    heads = mods.BridgeHeads(16).eval()
    sem, res = torch.randn(3, 8, 1024), torch.randn(3, 4, 1024)
    ref = heads.fuse(sem, res)
    assert torch.equal(mem.fuse_with_memory(heads, sem, res, None, 0.5), ref)
    assert torch.equal(mem.fuse_with_memory(heads, sem, res, torch.randn(8, 1024), 0.0), ref)
    # a tiny strength approaches the reference; a real bank changes the tokens
    bank = torch.randn(8, 1024) * 5
    near = mem.fuse_with_memory(heads, sem, res, bank, 1e-12)
    assert torch.allclose(near, ref, atol=1e-4)
    assert not torch.allclose(mem.fuse_with_memory(heads, sem, res, bank, 1.0), ref, atol=1e-3)


def test_prompt_history_with_shared_model(nodes, shared_pipeline):
    """With an empty memory the prompt is the reference one; with a chapter it becomes an earlier chat turn."""
    mem = importlib.import_module(f"{PKG}.audiostory_core.tasks.memory")
    plan_mod = importlib.import_module(f"{PKG}.audiostory_core.stages.plan")
    pl = shared_pipeline.models.planner
    instr = "A fire truck leaves the station with sirens blaring. The total duration is 7.5 seconds."
    assert mem.with_history(pl.tokenizer, pl.ids, mem.StoryMemory(), instr) is None
    ch1 = plan_mod.StoryPlan.from_dict({"instruction": "A storm. The total duration is 4.0 seconds.",
                                        "reasoning": "one event", "events": [{"caption": "rain", "duration": 4}]})
    m = mem.StoryMemory().add_chapter(ch1, torch.randn(1, 8, 1024), torch.randn(1, 4, 1024))
    ctx = mem.with_history(pl.tokenizer, pl.ids, m, instr)
    ref = plan_mod.prompt_ids_for(pl.tokenizer, instr)
    text = pl.tokenizer.decode(ctx.prompt_ids)
    grammar = importlib.import_module(f"{PKG}.audiostory_core.stages.grammar")
    n_sys = len(pl.tokenizer.encode(grammar.SYSTEM_MESSAGE, add_special_tokens=False))
    assert ctx.prompt_ids[:n_sys] == ref[:n_sys] and ctx.prompt_ids[-(len(ref) - n_sys):] == ref[n_sys:]
    assert "A storm." in text and "rain" in text and not ctx.positions
    assert text.index("A storm.") < text.index("fire truck")


def test_planner_builds_the_audio_prompt_for_its_own_instruction(nodes, shared_pipeline, tmp_path):
    """The Audio Context node may carry another instruction/duration (or none): the Planner's prompt
    context is rebuilt for the Planner's instruction and total duration, audio tokens included."""
    from synthetic_media import tone
    from tiny_media_models import build_tiny_whisper

    cont = importlib.import_module(f"{PKG}.audiostory_core.tasks.continuation")
    grammar = importlib.import_module(f"{PKG}.audiostory_core.stages.grammar")
    plan_mod = importlib.import_module(f"{PKG}.audiostory_core.stages.plan")
    pl = shared_pipeline.models.planner
    tok = pl.tokenizer
    tensors = nodes.audio_context.checkpoint_tensors(shared_pipeline.models.paths.checkpoint)
    make_audio_context = nodes.audio_context.make_audio_context
    whisper = cont.WhisperFeatures.from_pretrained(build_tiny_whisper(tmp_path / "whisper").name, [tmp_path])
    kw = dict(tensors=tensors, whisper=whisper, mode="auto", long_input="error", placeholder="<aud>,<aud_{:05d}>,</aud>")
    planner_instr, planner_total = "A thunderstorm rolls over a quiet farm at night.", 12.0
    other = make_audio_context(pl, tone(3.0, 44100), 44100, description="", instruction="Birds at dawn.",
                                     total_duration=30.0, **kw)
    unbound = make_audio_context(pl, tone(3.0, 44100), 44100, description="", instruction="",
                                       total_duration=12.0, **kw)
    assert other.mode == "whisper" and unbound.context is None
    full = grammar.build_instruction(planner_instr, planner_total)
    expected = cont.placeholder_prompt(tok, full, 4, cont.PlaceholderLayout()).prompt_ids
    for ctx in (other, unbound):
        lead, pc = nodes.values.planner_audio_context(ctx, tok, planner_instr, planner_total)
        assert lead == "" and pc.prompt_ids == expected and pc.embeds is ctx.embeds
        text = tok.decode(pc.prompt_ids)
        assert "The total duration is 12.0 seconds." in text and "Birds" not in text and "30.0" not in text
        assert [tok.convert_ids_to_tokens(pc.prompt_ids[p]) for p in pc.positions] == \
            [f"<aud_{i:05d}>" for i in range(4)]
        # the same prompt as the core continuation path, and the planner really plans from it
        core_pc = ctx.prompt_context(tok, grammar.build_instruction(ctx.instruction_prefix + planner_instr,
                                                                    planner_total))
        assert core_pc.prompt_ids == pc.prompt_ids and core_pc.positions == pc.positions
        res = plan_mod.generate_plan(pl, planner_instr, planner_total, lead=lead, max_new_tokens=2, context=pc)
        assert res.prompt_ids == expected
    assert other.context.prompt_ids != expected            # what the Planner used to take as given

    # a description travels as the lead, in front of the Planner's instruction
    described = make_audio_context(pl, tone(3.0, 44100), 44100, description="a coach blows a whistle",
                                         instruction="", total_duration=5.0, **kw)
    lead, pc = nodes.values.planner_audio_context(described, tok, planner_instr, 9.0)
    assert lead == "The input audio contains a coach blows a whistle. "
    assert "contains a coach blows a whistle. A thunderstorm" in tok.decode(pc.prompt_ids)
    assert "The total duration is 9.0 seconds." in tok.decode(pc.prompt_ids)
    # the text fallback has no prompt context, only the lead; plain values are used as given
    text_ctx = make_audio_context(pl, tone(3.0, 44100), 44100, description="rain on a roof", instruction="x",
                                        total_duration=5.0, **dict(kw, mode="text"))
    assert nodes.values.planner_audio_context(text_ctx, tok, planner_instr, 9.0) == \
        ("The input audio contains rain on a roof. ", None)
    fixed = plan_mod.PromptContext(prompt_ids=[1, 2], positions=[], embeds=torch.zeros(0))
    fixed_value = nodes.values.AudioContextValue(fixed, "p ")
    assert nodes.values.planner_audio_context(fixed_value, tok, "x", 5.0) == ("p ", fixed)
    assert nodes.values.planner_audio_context(None, tok, "x", 5.0) == ("", None)


def test_audio_helpers(nodes):
    a = nodes.layout.audio_dict(torch.zeros(2, 100), 32000)
    assert a["waveform"].shape == (1, 2, 100) and a["sample_rate"] == 32000
    w, sr = nodes.layout.audio_from_dict({"waveform": torch.ones(2, 1, 10), "sample_rate": 16000})
    assert w.shape == (1, 20) and sr == 16000
    with pytest.raises(Exception, match="AUDIO"):
        nodes.layout.audio_from_dict({"samples": 1})
    b = nodes.layout.pad_clips([torch.ones(2, 5), torch.ones(2, 3)])
    assert b.shape == (2, 2, 5) and b[1, :, 3:].abs().sum() == 0


def test_save_prefix_and_flac_metadata(nodes, tmp_path):
    import av

    assert nodes.save.safe_prefix("") == "audio/AudioStory"
    for bad in ("/abs/x", "a/../../x"):
        with pytest.raises(Exception):
            nodes.save.safe_prefix(bad)
    meta = nodes.save.workflow_metadata({"1": {"class_type": "X"}}, {"workflow": {"nodes": []}})
    write_audio = importlib.import_module(f"{PKG}.audiostory_core.stages.audio").write_audio
    f = write_audio(tmp_path / "a.flac", torch.sin(torch.arange(8000) / 10.0).repeat(2, 1) * 0.5, 32000,
                    metadata=meta)
    with av.open(str(f)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        assert json.loads(tags["prompt"]) == {"1": {"class_type": "X"}}
        assert json.loads(tags["workflow"]) == {"nodes": []}
        s = c.streams.audio[0]
        assert s.rate == 32000 and s.channels == 2
    assert not list(tmp_path.glob(".*part*"))


def test_text_throttle_and_stage_progress(nodes):
    sent, t = [], [0.0]
    th = nodes.streaming.TextThrottle(sent.append, interval=1.0, clock=lambda: t[0])
    th("a")
    th("ab")
    t[0] = 2.0
    th("abc")
    th("abcd")
    th.flush()
    assert sent == ["a", "abc", "abcd"]

    class Bar:
        made = []

        def __init__(self, total):
            self.calls = []
            Bar.made.append(self)

        def update_absolute(self, v, total=None):
            self.calls.append((v, total))

    p = nodes.streaming.StageProgress(Bar)
    p("plan", 1, 10)
    p("plan", 2, 10)
    p("sample", 1, 50)
    assert len(Bar.made) == 2 and Bar.made[0].calls == [(1, 10), (2, 10)] and Bar.made[1].calls == [(1, 50)]


def test_mux_stream_copies_video(tmp_path):
    """The reusable mux (audiostory_core.media.mux) copies the video packets byte for byte."""
    av = pytest.importorskip("av")
    from audiostory_core.media.mux import mux_audio_onto_video

    from e2e_media import make_video

    src = make_video(tmp_path / "in.mp4", seconds=2.0)
    out = mux_audio_onto_video(src, torch.randn(2, 16000) * 0.1, 32000, tmp_path / "out.mp4", policy="pad")

    def packets(p):
        with av.open(str(p)) as c:
            return [bytes(x) for x in c.demux(c.streams.video[0]) if x.dts is not None]

    assert packets(src) == packets(out)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"


# ---------------------------------------------------------------- streamed plan text
def test_streamed_plan_text_has_no_control_tokens(nodes):
    r = nodes.streaming.readable_stream
    assert r("The storm comes in three ") == "The storm comes in three"
    assert r("Rain first.<|/think|><|gen|>crick") == "Rain first.\n\n1. crick"
    raw = ("Rain first.<|/think|><|gen|>crickets chirp softly<timestamp>4.0</timestamp><t5><t5_00000><t5_00001>"
           "</t5><aud><aud_00000></aud><|/gen|><|gen|><timestamp>2.5</timestamp> distant thunder<t5><t5_00000>")
    assert r(raw) == "Rain first.\n\n1. [4 s] crickets chirp softly\n2. [2.5 s] distant thunder"
    assert r("R.<|/think|><|gen|>rain<timestamp>3.") == "R.\n\n1. rain"       # duration still being written
    assert "<" not in r(raw + "</t5><aud><aud_00000></aud><|/gen|><|im_end|>")



def test_streamed_plan_text_never_shows_half_a_word(nodes):
    """Tokens arrive as word pieces ("lo", "ud"); the node gets whole words only."""
    sent = []
    sink = nodes.streaming.ReadableStream(sent.append)
    for raw in ("The rain grows lo", "The rain grows loud", "The rain grows loud.<|/think|><|gen|>thun",
                "The rain grows loud.<|/think|><|gen|>thunder<timestamp>3", "The rain grows loud.<|/think|>"
                "<|gen|>thunder<timestamp>3.5</timestamp><t5>"):
        sink(raw)
    assert sent == ["The rain grows", "The rain grows", "The rain grows loud.\n\n1.",
                    "The rain grows loud.\n\n1. thunder", "The rain grows loud.\n\n1. [3.5 s] thunder"]


def test_planner_shows_the_finished_event_list(nodes):
    from audiostory_core.stages.plan import StoryPlan

    plan = StoryPlan.from_dict({"instruction": "x", "reasoning": "Calm, then a storm.", "events": [
        {"caption": "crickets chirp softly", "duration": 4.0}, {"caption": "distant thunder", "duration": 2.5},
        {"caption": "heavy rain", "duration": 5.5}]})
    assert nodes.input_checks.describe_plan(plan).splitlines() == [
        "3 events, 12 s:", "1. 0\u20134 s  crickets chirp softly", "2. 4\u20136.5 s  distant thunder",
        "3. 6.5\u201312 s  heavy rain", "", "reasoning: Calm, then a storm."]


def test_streamed_plan_text_ends_as_the_final_plan_text(nodes, shared_pipeline):
    """Streaming the shared fixture's plan through the node's sink ends with exactly StoryPlan.text()."""
    from audiostory_core.progress import Hooks
    from audiostory_core.stages.plan import generate_plan

    seen = []
    sink = nodes.streaming.ReadableStream(seen.append)
    res = generate_plan(shared_pipeline.models.planner, "A thunderstorm rolls over a quiet farm at night.", 12.0,
                        hooks=Hooks(text=sink))
    assert len(res.plan.events) == 3 and len(seen) > 10
    assert seen[-1] == res.plan.text()
    assert not any("<|" in s or "<t5" in s or "<aud" in s or "<timestamp" in s for s in seen)


# ---------------------------------------------------------------- validation helpers (validate_inputs)
def test_single_input_validation_messages(nodes):
    assert nodes.input_checks.instruction_problem(None) is None
    assert nodes.input_checks.instruction_problem("A storm.") is None
    assert "instruction is empty" in nodes.input_checks.instruction_problem("   ")
    assert nodes.input_checks.sample_rate_problem(0) is None and nodes.input_checks.sample_rate_problem(32000) is None
    assert nodes.input_checks.sample_rate_problem(None) is None                      # linked: checked when it runs
    for bad in (999999, 100):
        msg = nodes.input_checks.sample_rate_problem(bad)
        assert msg.startswith("sample_rate must be 0 (the VAE's own rate) or between 8000 and 192000") and str(bad) in msg


# ---------------------------------------------------------------- dtypes and memory estimates
def test_dtype_preference_and_fp8_flags(nodes):
    pick = lambda *a: nodes.dtypes_memory.pick_dtype(*a, "DiT", "--fp8_e4m3fn-unet")    # noqa: E731
    assert pick(None, None, True, True) == torch.bfloat16               # bf16 where the device does it well
    assert pick(None, None, False, True) == torch.float16               # else fp16 (the official choice)
    assert pick(None, None, False, False) == torch.float32              # CPU
    assert pick(torch.float16, None, True, True) == torch.float16       # the loader's choice wins
    assert pick(None, torch.float32, True, True) == torch.float32       # a --fp32-unet style flag
    with pytest.raises(nodes.input_checks.InputError, match=r"--fp8_e4m3fn-unet.*DiT.*bf16 or fp16"):
        pick(None, torch.float8_e4m3fn, True, True)
    assert pick(torch.bfloat16, torch.float8_e4m3fn, True, True) == torch.bfloat16


def test_working_memory_estimates(nodes):
    from transformers import Qwen2Config, WhisperConfig

    hf_working_memory = nodes.dtypes_memory.hf_working_memory
    dit_working_memory = nodes.dtypes_memory.dit_working_memory

    qwen = Qwen2Config(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       intermediate_size=11008, vocab_size=152277)          # Qwen2.5-3B
    m = hf_working_memory(qwen, 2000, torch.bfloat16)
    kv = 2 * 36 * 2 * 128 * 2000 * 2
    act = 2000 * (6 * 2048 + 3 * 11008) * 2
    assert m == kv + act + 152277 * 8
    assert hf_working_memory(qwen, 4000, torch.bfloat16) > m > hf_working_memory(qwen, 2000, torch.float16) - 1
    assert hf_working_memory(qwen, 2000, torch.float32) > m
    whisper = WhisperConfig(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120)
    assert hf_working_memory(whisper, 1500, torch.float32, kv_cache=False) == 1500 * (6 * 1280 + 3 * 5120) * 4
    one = dit_working_memory(batch=1, frames=645, context=65, width=1024, dtype=torch.float16)
    assert dit_working_memory(batch=8, frames=645, context=65, width=1024, dtype=torch.float16) == 8 * one
    assert 10e6 < one < 100e6              # tens of MB per clip and step at release size
