"""The AudioStory prompt and transcript grammar, including broken transcripts."""
from __future__ import annotations

from audiostory_core.stages.grammar import (TokenIds, build_instruction, build_prompt, lead_phrase, parse_transcript,
                                     render_caption, split_caption)

IDS = TokenIds(base=1000, n_semantic=3, n_residual=2)


def words(*toks):
    """Fake tokens: ints are ids, strings are single 'text' tokens decoded as themselves."""
    return list(toks)


def decode(ids):
    names = {IDS.ts_open: "<timestamp>", IDS.ts_close: "</timestamp>", IDS.think_close: "<|/think|>"}
    return "".join(names.get(t, t) if isinstance(t, int) else t for t in ids)


def event(caption="rain", dur="4.0", close=True):
    return ([IDS.gen_open, caption, IDS.ts_open, dur, IDS.ts_close] + IDS.semantic_block() + IDS.residual_block()
            + ([IDS.gen_close] if close else []))


def test_prompt_is_the_official_chat_template():
    instr = build_instruction("A fire truck leaves.", 35)
    assert instr == "A fire truck leaves. The total duration is 35.0 seconds."
    assert build_prompt(instr) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                   "<|im_start|>user\nA fire truck leaves. The total duration is 35.0 seconds."
                                   "<|im_end|>\n<|im_start|>assistant\n<|think|>")


def test_random_lead_phrase_matches_inference_py_with_seed_0():
    assert lead_phrase("random", 0) == "Produce an in-depth, multi-layered audio that portrays "
    assert lead_phrase("none") == ""


def test_well_formed_transcript():
    ids = ["two events", IDS.think_close] + event("rain", "4.0") + event("thunder", "3.5") + [7]
    p = parse_transcript(ids, IDS, decode)
    assert p.reasoning == "two events" and p.problems == []
    assert [(e.caption, e.duration) for e in p.events] == [("rain", 4.0), ("thunder", 3.5)]
    assert ids[p.events[1].t5_close_pos] == IDS.t5_close


def test_truncated_last_event_keeps_the_others():
    ids = ["r", IDS.think_close] + event("rain") + event("wind")[:6]
    p = parse_transcript(ids, IDS, decode)
    assert [e.caption for e in p.events] == ["rain"]
    assert "event 2" in p.problems[0] and "semantic block" in p.problems[0]


def test_missing_timestamp_drops_only_that_event():
    bad = [IDS.gen_open, "birds"] + IDS.semantic_block() + IDS.residual_block() + [IDS.gen_close]
    ids = ["r", IDS.think_close] + bad + event("rain", "2.0")
    p = parse_transcript(ids, IDS, decode)
    assert [e.caption for e in p.events] == ["rain"]
    assert any("event 1" in x and "timestamp" in x for x in p.problems)


def test_zero_events_is_reported():
    p = parse_transcript(["just thinking", IDS.think_close, 5], IDS, decode)
    assert p.events == [] and any("no event" in x for x in p.problems)


def test_residual_block_missing_is_reported():
    ids = ["r", IDS.think_close, IDS.gen_open, "x", IDS.ts_open, "3", IDS.ts_close] + IDS.semantic_block()
    p = parse_transcript(ids, IDS, decode)
    assert p.events == [] and "residual block" in p.problems[0]


def test_caption_split_and_render():
    assert split_caption("rain<timestamp>4.0</timestamp>") == ("rain", 4.0)
    assert split_caption("rain <timestamp>x</timestamp>") == ("rain", None)
    assert split_caption("no tag") == ("no tag", None)
    # edits keep the layout the LLM chose
    assert render_caption("rain", 5.5, "rain<timestamp>4.0</timestamp>") == "rain<timestamp>5.5</timestamp>"
    assert render_caption("rain", 4.0, "rain<timestamp>4.0</timestamp>") == "rain<timestamp>4.0</timestamp>"
    assert render_caption("snow", 2.0) == "snow <timestamp>2.0</timestamp>"
