"""The logits processors against independent oracles: transformers' own repetition penalty and the
official AutoT5/AutoAudio rule written from its specification (force max+10, weak 0.0 suppression)."""
from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from audiostory_core.stages.processors import apply_processors, repetition_penalty

SEM = [50, 51, 52, 53, 54]   # <t5> q0 q1 q2 </t5>
RES = [60, 61, 62, 63]       # <aud> r0 r1 </aud>


@pytest.mark.parametrize("penalty", [1.05, 1.3, 0.8])
def test_repetition_penalty_equals_transformers(penalty):
    g = torch.Generator().manual_seed(int(penalty * 100))
    scores = torch.randn(1, 200, generator=g) * 5          # positive and negative logits
    seen = torch.tensor([[3, 17, 17, 150, 42, 3, 199, 0]])  # repeats count once
    expected = RepetitionPenaltyLogitsProcessor(penalty)(seen, scores.clone())
    got = repetition_penalty(scores.clone(), seen, penalty)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, scores)                      # the penalty really changed something
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[seen[0]] = False
    assert torch.equal(got[0, untouched], scores[0, untouched])


def test_penalty_one_is_the_identity():
    scores = torch.randn(1, 50)
    assert torch.equal(repetition_penalty(scores, torch.tensor([[1, 2, 3]]), 1.0), scores)


def _official(scores: torch.Tensor, last: int, block: list[int]) -> torch.Tensor:
    """AutoT5/AutoAudioTokenGenerationProcessor (generation.py:9-61), from the reference notes."""
    scores = scores.clone()
    if last in block[:-1]:
        scores[0, block[block.index(last) + 1]] = scores[0].max() + 10.0
    else:
        scores[0, torch.tensor(block[1:])] = 0.0
    return scores


@pytest.mark.parametrize("last", [50, 51, 53, 54, 60, 62, 63, 7])
def test_apply_processors_equals_the_official_pair(last):
    g = torch.Generator().manual_seed(last)
    scores = torch.randn(1, 100, generator=g) * 3 - 6        # mostly negative: 0.0 is a high logit here
    expected = _official(_official(scores, last, SEM), last, RES)
    got = scores.clone()
    apply_processors(got, last, SEM, RES)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_inside_a_block_the_next_query_token_is_forced():
    scores = torch.randn(1, 100)
    apply_processors(scores, 52, SEM, RES)                     # after q1 comes q2
    assert int(scores.argmax()) == 53
    scores = torch.randn(1, 100)
    apply_processors(scores, 62, SEM, RES)                     # after r1 comes </aud>
    assert int(scores.argmax()) == 63


def test_outside_a_block_query_tokens_get_exactly_zero_not_minus_inf():
    scores = torch.full((1, 100), -4.0)
    apply_processors(scores, 7, SEM, RES)
    assert scores[0, SEM[1:]].tolist() == [0.0] * 4 and scores[0, RES[1:]].tolist() == [0.0] * 3
    assert scores[0, SEM[0]] == -4.0 and scores[0, RES[0]] == -4.0  # the opening tags stay free
    # weak suppression: with every other logit negative, a query token can still win
    assert int(scores.argmax()) in SEM[1:] + RES[1:]
