"""The official logits processors, shared by the reference and the fast plan decoders.

``apply_processors`` is AudioStory's AutoT5/AutoAudio pair (force the rest of a query block once it
has started, and keep query tokens out of free text); ``repetition_penalty`` is transformers'
``RepetitionPenaltyLogitsProcessor``, written out so the decode loop needs no ``generate`` call.
"""
from __future__ import annotations

import torch


def apply_processors(scores: torch.Tensor, last: int, sem_block: list[int], res_block: list[int]) -> None:
    """The official AutoT5/AutoAudio token processors, in that order (in place, batch of one)."""
    for block in (sem_block, res_block):
        if last in block[:-1]:
            nxt = block[block.index(last) + 1]
            scores[0, nxt] = scores[0].max() + 10.0
        else:
            scores[0, block[1:]] = 0.0


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``RepetitionPenaltyLogitsProcessor``: divide positive, multiply negative logits of seen ids."""
    if penalty == 1.0:
        return scores
    s = torch.gather(scores, 1, seen)
    s = torch.where(s < 0, s * penalty, s / penalty)
    return scores.scatter(1, seen, s)
