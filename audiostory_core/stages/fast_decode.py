"""Fast plan decoding: forced query blocks in one forward, static KV cache, compiled decode step.

The reference loop (:func:`audiostory_core.plan.generate_plan` with its defaults) feeds every token
on its own, exactly like ``llm.generate``. This module holds the optional fast loop. It computes the
same thing, with three changes that are each switchable:

* ``fast_blocks``: once the model emits ``<t5>`` (or ``<aud>``, or any query token of a block), the
  official logits processors force the rest of the block with ``max + 10``, so the block is known in
  advance. The whole block ``<t5> q_0 .. q_{N-1} </t5>`` is fed in **one** forward pass. The forced
  tokens are still checked: the logits of every block position are computed, passed through the
  same repetition penalty and processors, and the token the reference would pick (argmax, or the
  token source) must be the forced one. Where it is not (possible in principle: the forced logit
  ``max + 10`` can lose to the ``0.0`` the other processor writes when every logit is below -10),
  the cache is cropped and decoding continues token by token from there. The result is therefore
  the reference token sequence; hidden states differ only by float rounding (different matmul shapes).
* ``static_cache``: a preallocated :class:`transformers.StaticCache` instead of ``DynamicCache``.
* ``compile``: the one-token step and the two block shapes run through ``torch.compile`` with CUDA
  graphs (``mode="reduce-overhead"``). Only on CUDA; on CPU the step is eager. A compile or capture
  failure falls back to eager once, with one warning (:mod:`.compile_fallback`).

A *token source* replaces the argmax choice; :class:`ScriptedTokens` follows a fixed script, which
lets a benchmark drive a random-weight LLM through a realistic story with the real decode loop.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch

from .compile_fallback import EagerFallback, compile_applies, failed
from .processors import apply_processors

TokenSource = Callable[[torch.Tensor, list], int]


class ScriptedTokens:
    """Chooses the next token from a fixed script instead of the argmax.

    The argmax is still computed and read back (one device sync per token, as greedy decoding has),
    so the decode loop costs what it costs with a real model. ``choose_block`` answers for a whole
    forced block at once.
    """

    def __init__(self, script: Sequence[int]):
        self.script = [int(t) for t in script]

    def _at(self, i: int) -> int:
        if i >= len(self.script):
            raise IndexError(f"the token script has {len(self.script)} tokens; decoding asked for token {i + 1}")
        return self.script[i]

    def __call__(self, scores: torch.Tensor, generated: list) -> int:
        int(torch.argmax(scores[0]))
        return self._at(len(generated))

    def choose_block(self, scores: torch.Tensor, generated: list) -> list[int]:
        """Tokens chosen at each row of ``scores`` [K, V]; row j follows ``generated`` + j tokens."""
        torch.argmax(scores, dim=-1).tolist()
        n = len(generated)
        return [self.script[n + j] if n + j < len(self.script) else -1 for j in range(scores.shape[0])]


def penalise(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Repetition penalty with a boolean mask of seen ids (same values as the gather/scatter form)."""
    if penalty == 1.0:
        return scores
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def _static_cache(cls, llm, max_len: int, device: torch.device):
    """A one-sequence ``StaticCache``. Older transformers (4.50) need the batch size, device and dtype up
    front (their default batch size is ``None``); newer ones allocate lazily and drop some of these
    arguments, so only the ones the installed constructor takes are passed."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    extra = {"max_batch_size": 1, "device": device, "dtype": next(llm.parameters()).dtype}
    return cls(config=llm.config, max_cache_len=max_len, **{k: v for k, v in extra.items() if k in params})


def _graph_step(fn: Callable, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One CUDA-graph step; its output buffer is reused by the next replay, hence the copy."""
    torch.compiler.cudagraph_mark_step_begin()
    return fn(ids, pos).clone()


class _Runner:
    """Feeds tokens to the LLM and keeps its KV cache; ``length`` tokens are cached."""

    def __init__(self, llm, max_len: int, static: bool, compile: bool, block_sizes: Sequence[int]):
        from transformers import DynamicCache, StaticCache

        self.llm = llm
        self.static = static
        self.length = 0
        self.dev = next(llm.parameters()).device
        if static:
            self.cache = _static_cache(StaticCache, llm, max_len, self.dev)
        else:
            self.cache = DynamicCache()
        self.compiled = {}
        if compile and static and compile_applies(self.dev) and not failed(llm):
            for k in sorted(set([1, *block_sizes])):
                fn = torch.compile(self._forward, mode="reduce-overhead", fullgraph=True, dynamic=False)
                # a failed capture re-runs the step eagerly: it rewrites the same cache positions
                self.compiled[k] = EagerFallback(llm, partial(_graph_step, fn), self._forward,
                                                 "the compiled plan-decode step (torch.compile, CUDA graphs)")

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.llm.model(input_ids=ids, past_key_values=self.cache, cache_position=pos, use_cache=True)
        return out.last_hidden_state

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[1]
        kw = {"cache_position": torch.arange(n, device=self.dev)} if self.static else {}
        h = self.llm.model(inputs_embeds=embeds, past_key_values=self.cache, use_cache=True, **kw).last_hidden_state
        self.length = n
        return h

    def feed(self, tokens: list[int]) -> torch.Tensor:
        k = len(tokens)
        ids = torch.tensor([tokens], device=self.dev)
        if self.static:
            pos = torch.arange(self.length, self.length + k, device=self.dev)
            fn = self.compiled.get(k)
            if fn is not None:
                h = fn(ids, pos)
            else:
                h = self._forward(ids, pos)
        else:
            h = self.llm.model(input_ids=ids, past_key_values=self.cache, use_cache=True).last_hidden_state
        self.length += k
        return h

    def crop(self, length: int) -> None:
        """Forget cached tokens beyond ``length`` (a static cache simply overwrites them later)."""
        if not self.static:
            drop = self.cache.get_seq_length() - length
            if drop > 0:  # a negative count means "drop this many" in transformers 4.x and 5.x alike
                self.cache.crop(-drop)
        self.length = length


@torch.no_grad()
def decode_fast(llm, embeds: torch.Tensor, prompt: list[int], *, limit: int, eos: set, penalty: float,
                sem_block: list[int], res_block: list[int], keep_hidden: bool = True,
                fast_blocks: bool = True, static_cache: bool = False, compile: bool = False,
                token_source: Optional[TokenSource] = None, hooks=None, tokenizer=None,
                stats: Optional[dict] = None) -> tuple[list[int], Optional[torch.Tensor]]:
    """The fast decode loop. Returns the generated ids and the states of every fed generated token
    (``hidden[j]`` has generated token ``j`` as input), like the reference loop."""
    dev = embeds.device
    vocab = llm.lm_head.weight.shape[0]
    runner = _Runner(llm, len(prompt) + limit + 1, static_cache, compile,
                     (len(sem_block), len(res_block)))
    seen = torch.zeros(1, vocab, dtype=torch.bool, device=dev)
    seen[0, torch.tensor(prompt, device=dev)] = True
    free_zero = torch.tensor(sem_block[1:] + res_block[1:], device=dev)
    h = runner.prefill(embeds)[:, -1:]
    generated: list[int] = []
    states: list[torch.Tensor] = []
    last = prompt[-1]
    step = 0
    n_forwards, n_block_tokens, n_fallback = 1, 0, 0
    while step < limit:
        if hooks is not None:
            hooks.check()
        logits = llm.lm_head(h[:, -1, :]).float()
        logits = penalise(logits, seen, penalty)
        if last in sem_block[:-1] or last in res_block[:-1]:
            apply_processors(logits, last, sem_block, res_block)
        else:  # both processors suppress their block's tokens (weak: set to 0.0)
            logits[0, free_zero] = 0.0
        nxt = token_source(logits, generated) if token_source is not None else int(torch.argmax(logits, dim=-1))
        generated.append(nxt)
        if hooks is not None:
            hooks.report("plan", step + 1, limit)
            if hooks.text is not None and tokenizer is not None and nxt not in sem_block[1:] \
                    and nxt not in res_block[1:]:
                hooks.emit(tokenizer.decode(generated))
        if nxt in eos or step + 1 == limit:
            break
        feed = [nxt]
        if fast_blocks:
            for blk in (sem_block, res_block):
                if nxt in blk[:-1]:
                    cont = blk[blk.index(nxt) + 1:]
                    if step + 1 + len(cont) < limit:
                        feed += cont
        base = runner.length
        h = runner.feed(feed)
        n_forwards += 1
        seen[0, nxt] = True
        if len(feed) > 1:
            ok = _check_block(llm, h, feed, seen, penalty, sem_block, res_block, token_source, generated)
            # ok = number of forced tokens the reference would also have chosen
            accepted = feed[1:1 + ok]
            generated += accepted
            for t in accepted:
                seen[0, t] = True
            if ok < len(feed) - 1:
                n_fallback += 1
                runner.crop(base + 1 + ok)
                h = h[:, :1 + ok]
            n_block_tokens += ok
            step += ok
            if hooks is not None:
                hooks.report("plan", step + 1, limit)
        if keep_hidden:
            states.extend(h[0, i].clone() for i in range(h.shape[1]))
        last = generated[-1]
        step += 1
    if stats is not None:
        stats.update(forwards=n_forwards, block_tokens=n_block_tokens, fallbacks=n_fallback,
                     generated=len(generated))
    return generated, (torch.stack(states) if states else None)


def _check_block(llm, h: torch.Tensor, feed: list[int], seen: torch.Tensor, penalty: float,
                 sem_block: list[int], res_block: list[int], token_source, generated: list[int]) -> int:
    """How many forced tokens ``feed[1:]`` the reference loop would have chosen, in order.

    Row j of the block (input ``feed[j]``) is scored exactly as the reference scores it: repetition
    penalty over everything seen so far, then the two processors with ``last = feed[j]``.
    """
    k = len(feed) - 1
    dev = h.device
    scores = llm.lm_head(h[0, :k]).float()                      # [k, V]
    rows = torch.arange(k, device=dev)
    idx = torch.tensor(feed[1:k], device=dev, dtype=torch.long)
    extra = torch.zeros_like(scores, dtype=torch.bool)
    if k > 1:  # row j has also seen feed[1..j]
        tri = rows[:, None] >= torch.arange(1, k, device=dev)[None, :]
        extra.scatter_(1, idx[None].expand(k, -1), tri)
    scores = penalise(scores, seen | extra, penalty)
    blk = sem_block if feed[0] in sem_block[:-1] else res_block
    forced = torch.tensor(feed[1:], device=dev)
    for b in (sem_block, res_block):   # processor order of the official code
        if b is blk:
            scores[rows, forced] = scores.max(dim=1).values + 10.0
        else:
            scores[:, b[1:]] = 0.0
    if token_source is None:
        chosen = torch.argmax(scores, dim=-1).tolist()
    elif hasattr(token_source, "choose_block"):
        chosen = token_source.choose_block(scores, generated)
    else:
        chosen = []
        for j in range(k):
            chosen.append(token_source(scores[j:j + 1], generated + feed[1:j + 1]))
    ok = 0
    for c, f in zip(chosen, feed[1:]):
        if c != f:
            break
        ok += 1
    return ok
