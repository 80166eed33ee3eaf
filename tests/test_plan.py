"""Planning: greedy decoding with the official grammar, and plans as editable JSON."""
from __future__ import annotations

import pytest
import torch

from audiostory_core.errors import InputError, PlanError
from audiostory_core.stages.plan import StoryPlan, generate_plan, prompt_ids_for
from tiny_checkpoint import STORIES

# The shared fixture's README: three instructions, event counts, durations summing to the total.
SHARED_PLANS = {
    ("A thunderstorm rolls over a quiet farm at night.", 12.0): [
        ("crickets chirp softly in a calm field", 4.0), ("distant thunder rumbles as rain begins", 3.5),
        ("heavy rain pours while a dog barks", 4.5)],
    ("A fire truck leaves the station with sirens blaring.", 7.5): [
        ("a siren wails as a heavy engine starts", 5.0), ("the truck drives away and fades", 2.5)],
    ("A busy morning in a small city cafe.", 14.0): [
        ("a door bell rings and people chat", 3.0), ("an espresso machine hisses and cups clink", 4.0),
        ("a spoon stirs coffee in a mug", 2.0), ("soft music plays while rain taps the window", 5.0)],
}


@pytest.mark.parametrize("story", list(SHARED_PLANS))
def test_shared_official_fixture_plans(shared_pipeline, story):
    res = shared_pipeline.plan(*story)
    got = [(e.caption, e.duration) for e in res.plan.events]
    assert got == SHARED_PLANS[story]
    assert sum(d for _, d in got) == story[1]
    assert res.plan.problems == []


@pytest.mark.parametrize("story", list(STORIES))
def test_own_tiny_checkpoint_emits_the_grammar(tiny_pipeline, story):
    reasoning, events = STORIES[story]
    plan = tiny_pipeline.plan(*story).plan
    assert plan.reasoning == reasoning
    assert [(e.caption, e.duration) for e in plan.events] == events


class _OfficialProcessor:
    """Same rule as AutoT5/AutoAudioTokenGenerationProcessor (force max+10 / weak 0.0 suppression)."""

    def __init__(self, block):
        self.block = block

    def __call__(self, input_ids, scores):
        last = int(input_ids[0, -1])
        if last in self.block[:-1]:
            scores[0, self.block[self.block.index(last) + 1]] = scores[0].max() + 10.0
        else:
            scores[0, self.block[1:]] = 0.0
        return scores


def test_decode_loop_equals_transformers_generate(shared_pipeline):
    """Our loop vs HF generate(do_sample=False) with generation_config.json (repetition penalty, EOS)."""
    from transformers import GenerationConfig, LogitsProcessorList

    pl = shared_pipeline.models.planner
    res = shared_pipeline.plan("A busy morning in a small city cafe.", 14.0)
    ids = torch.tensor([prompt_ids_for(pl.tokenizer, res.plan.instruction)])
    gc = GenerationConfig.from_pretrained(shared_pipeline.models.paths.qwen_dir)
    gc.do_sample, gc.max_new_tokens = False, 400
    procs = LogitsProcessorList([_OfficialProcessor(pl.ids.semantic_block()),
                                 _OfficialProcessor(pl.ids.residual_block())])
    out = pl.llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc,
                          logits_processor=procs, output_hidden_states=True, return_dict_in_generate=True)
    assert out.sequences[0, ids.shape[1]:].tolist() == res.plan.transcript_ids
    hidden = torch.cat([h[-1] for h in out.hidden_states], dim=1)[0, ids.shape[1]:]
    torch.testing.assert_close(hidden, res.hidden, rtol=0, atol=1e-5)


UNSEEN = ("A crowded train station in the evening.", 9.0)  # not one of the fixture's training prompts


def test_repetition_penalty_matters_and_matches_generate_on_an_unseen_prompt(shared_pipeline):
    """On this prompt penalty 1.0 changes the ids (asserted), so a broken penalty cannot pass unseen."""
    from transformers import GenerationConfig, LogitsProcessorList

    pl = shared_pipeline.models.planner
    assert pl.generation.repetition_penalty == 1.05
    res = generate_plan(pl, *UNSEEN, max_new_tokens=60, keep_hidden=False)
    ids = torch.tensor([prompt_ids_for(pl.tokenizer, res.plan.instruction)])
    procs = LogitsProcessorList([_OfficialProcessor(pl.ids.semantic_block()),
                                 _OfficialProcessor(pl.ids.residual_block())])
    runs = {}
    for penalty in (1.05, 1.0):
        gc = GenerationConfig.from_pretrained(shared_pipeline.models.paths.qwen_dir)
        gc.do_sample, gc.max_new_tokens, gc.repetition_penalty = False, 60, penalty
        out = pl.llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc,
                              logits_processor=procs)
        runs[penalty] = out[0, ids.shape[1]:].tolist()
    assert res.plan.transcript_ids == runs[1.05]
    assert runs[1.0] != runs[1.05]


def test_max_new_tokens_truncates_and_keeps_valid_events(shared_pipeline):
    full = shared_pipeline.plan("A busy morning in a small city cafe.", 14.0).plan
    cut = full.events[2].span[0] + 12  # stop inside the 3rd event
    plan = shared_pipeline.plan("A busy morning in a small city cafe.", 14.0, max_new_tokens=cut).plan
    assert [e.caption for e in plan.events] == [e.caption for e in full.events[:2]]
    assert any("event 3" in p for p in plan.problems)


def test_empty_instruction_and_bad_durations_are_rejected(shared_pipeline):
    pl = shared_pipeline.models.planner
    with pytest.raises(InputError, match="instruction is empty"):
        generate_plan(pl, "   ", 10)
    for bad in (0, -3, 100000):
        with pytest.raises(InputError, match="Total duration"):
            generate_plan(pl, "rain", bad)


def test_plan_json_round_trip(shared_pipeline):
    plan = shared_pipeline.plan("A fire truck leaves the station with sirens blaring.", 7.5).plan
    again = StoryPlan.from_json(plan.to_json())
    assert again == plan


@pytest.mark.parametrize("text,match", [
    ('{"events": [}', r"line 1, column 13"),
    ('{"events": []}', "non-empty list"),
    ('{"events": [{"caption": "rain", "duration": -1}]}', r"events\[0\].duration must be > 0"),
    ('{"events": [{"caption": "", "duration": 2}]}', r"events\[0\].caption"),
    ('{"events": [{"caption": "a", "duration": "2"}]}', "number of seconds"),
])
def test_bad_plan_json_names_the_problem(text, match):
    with pytest.raises(PlanError, match=match):
        StoryPlan.from_json(text)


def test_event_longer_than_a_clip_is_rejected():
    with pytest.raises(PlanError, match="longer than one clip"):
        StoryPlan.from_json('{"events": [{"caption": "rain", "duration": 40}]}', max_event_seconds=26.9)


def test_progress_text_and_interrupt(shared_pipeline):
    from audiostory_core.errors import GenerationInterrupted
    from audiostory_core.progress import Hooks

    seen, texts = [], []
    shared_pipeline.plan("A fire truck leaves the station with sirens blaring.", 7.5,
                         hooks=Hooks(progress=lambda s, d, t: seen.append((s, d)), text=texts.append))
    assert seen[0] == ("plan", 1) and texts[-1].endswith("<|im_end|>")
    calls = iter(range(1000))
    with pytest.raises(GenerationInterrupted):
        shared_pipeline.plan("A fire truck leaves.", 7.5, hooks=Hooks(interrupt=lambda: next(calls) >= 5))
