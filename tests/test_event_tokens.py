"""Event tokens: captured during generation, or re-encoded by teacher forcing for edited plans."""
from __future__ import annotations

import torch

from audiostory_core.stages.plan import StoryPlan

CAFE = ("A busy morning in a small city cafe.", 14.0)


def test_teacher_forcing_equals_free_generation(shared_pipeline):
    res = shared_pipeline.plan(*CAFE)
    free = shared_pipeline.tokens(res)
    forced = shared_pipeline.tokens(StoryPlan.from_json(res.plan.to_json()))
    assert free.fused.shape == (4, 8, 1024) and free.residual.shape == (4, 4, 1024)
    for a, b in ((free.semantic, forced.semantic), (free.residual, forced.residual), (free.fused, forced.fused)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)  # same math, different matmul shapes


def test_editing_an_event_changes_it_and_what_follows_only(shared_pipeline):
    res = shared_pipeline.plan(*CAFE)
    base = shared_pipeline.tokens(res)
    plan = StoryPlan.from_json(res.plan.to_json())
    plan.events[2].caption, plan.events[2].duration = "a cat purrs", 2.5
    edited = shared_pipeline.tokens(plan)
    assert edited.durations == [3.0, 4.0, 2.5, 5.0]
    for i in (0, 1):
        torch.testing.assert_close(edited.fused[i], base.fused[i], rtol=1e-5, atol=1e-4)
    for i in (2, 3):
        assert (edited.fused[i] - base.fused[i]).abs().max() > 1e-2


def test_hand_written_plan_is_encoded(shared_pipeline):
    plan = StoryPlan.from_json('{"instruction": "Rain. The total duration is 6.0 seconds.", "reasoning": "two",'
                               ' "events": [{"caption": "rain", "duration": 3}, {"caption": "wind", "duration": 3}]}')
    toks = shared_pipeline.tokens(plan)
    assert toks.fused.shape == (2, 8, 1024) and torch.isfinite(toks.fused).all()


def test_fusion_is_the_official_formula(shared_pipeline):
    heads = shared_pipeline.models.planner.heads
    sem, res = torch.randn(3, 8, 1024), torch.randn(3, 4, 1024)
    want = []
    for i in range(3):  # one event at a time, sequence-first as nn.MultiheadAttention expects
        attn = heads.multihead_attention(sem[i][:, None], res[i][:, None], res[i][:, None])[0][:, 0]
        want.append((sem[i] + attn) / 10.0)
    torch.testing.assert_close(heads.fuse(sem, res), torch.stack(want), rtol=1e-5, atol=1e-5)


def test_deleting_an_event_removes_it_from_the_context(shared_pipeline):
    res = shared_pipeline.plan(*CAFE)
    base = shared_pipeline.tokens(res)
    plan = StoryPlan.from_json(res.plan.to_json())
    del plan.events[1]
    edited = shared_pipeline.tokens(plan)
    assert edited.fused.shape[0] == 3
    torch.testing.assert_close(edited.fused[0], base.fused[0], rtol=1e-5, atol=1e-4)
    assert (edited.fused[1] - base.fused[2]).abs().max() > 1e-2  # event 3 no longer sees event 2
