"""Editing a plan says what it does: which events get new conditioning, and why.

The oracle is the planner itself: the states captured while the plan was generated, compared with the
states teacher forcing computes for the edited plan. An event reported unchanged must keep its states;
an event reported re-encoded must get different ones.
"""
from __future__ import annotations

import json

import torch

from audiostory_core.stages.event_tokens import generated_states, reencoding_reasons, teacher_forced_states
from audiostory_core.stages.plan import StoryPlan, describe_reencoding

TRAIN = "A train arrives and leaves."


def _generated(tiny_pipeline):
    res = tiny_pipeline.plan(TRAIN, 10.0)
    assert len(res.plan.events) == 3
    return res


def _edited(plan: StoryPlan, **changes) -> StoryPlan:
    """The plan as a user gets it back after editing its JSON (``changes``: event index -> field values)."""
    d = json.loads(plan.to_json())
    for i, fields in changes.items():
        d["events"][int(i)].update(fields)
    return StoryPlan.from_json(json.dumps(d))


def _same_states(tiny_pipeline, res, plan) -> list[bool]:
    planner = tiny_pipeline.models.planner
    gen_sem, gen_res = generated_states(res, planner)
    sem, resid = teacher_forced_states(planner, plan)
    return [torch.allclose(sem[i], gen_sem[i], atol=1e-4) and torch.allclose(resid[i], gen_res[i], atol=1e-4)
            for i in range(len(plan.events))]


def test_an_unedited_plan_keeps_every_event(tiny_pipeline):
    res = _generated(tiny_pipeline)
    plan = _edited(res.plan)
    assert reencoding_reasons(tiny_pipeline.models.planner, plan) == ["", "", ""]
    assert _same_states(tiny_pipeline, res, plan) == [True, True, True]
    assert describe_reencoding(["", "", ""]).startswith("plan: no event edited")


def test_editing_event_2_re_encodes_it_and_every_later_event(tiny_pipeline):
    res = _generated(tiny_pipeline)
    plan = _edited(res.plan, **{"1": {"caption": "a bell rings on the platform"}})
    reasons = reencoding_reasons(tiny_pipeline.models.planner, plan)
    assert reasons == ["", "caption edited", "event 2 before it changed"]
    # what the report says is what the planner computes: event 1 keeps its states, 2 and 3 change
    assert _same_states(tiny_pipeline, res, plan) == [True, False, False]
    line = describe_reencoding(reasons)
    assert "2 (caption edited), 3 (event 2 before it changed); unchanged: 1" in line
    assert "--reroll" in line


def test_a_duration_edit_is_named(tiny_pipeline):
    res = _generated(tiny_pipeline)
    plan = _edited(res.plan, **{"2": {"duration": res.plan.events[2].duration + 1.0}})
    assert reencoding_reasons(tiny_pipeline.models.planner, plan) == ["", "", "duration edited"]
    assert _same_states(tiny_pipeline, res, plan) == [True, True, False]


def test_a_hand_written_plan_has_no_generated_tokens(tiny_pipeline):
    plan = StoryPlan.from_json(json.dumps({"instruction": TRAIN, "reasoning": "",
                                           "events": [{"caption": "rain", "duration": 4.0}]}))
    assert reencoding_reasons(tiny_pipeline.models.planner, plan) == [
        "no generated tokens (a new or hand-written event)"]


def test_generate_prints_the_report(tiny_root, tmp_path, capsys):
    from audiostory_core.cli.main import main

    assert main(["plan", "--models", str(tiny_root), "--instruction", TRAIN, "--duration", "10"]) == 0
    plan = json.loads(capsys.readouterr().out)
    plan["events"][0]["caption"] = "a bell rings at the station"
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(plan))
    assert main(["generate", "--models", str(tiny_root), "--plan", str(f), "--out", str(tmp_path / "s.wav"),
                 "--steps", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "plan: events re-encoded: 1 (caption edited), 2 (event 1 before it changed), " \
           "3 (event 1 before it changed)." in err
