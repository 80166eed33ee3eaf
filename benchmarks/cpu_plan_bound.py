"""Upper bound of the default way's planning speed-up at real size on CPU, from measured matmul costs.

    nice -n 19 python benchmarks/cpu_plan_bound.py [--dtype bf16] [--repeats 5]

Why: at real size a decode step on CPU is the weight matmuls of Qwen2.5-3B (36 layers of q/k/v/o and the
gate/up/down MLP, then the 151,936 x 2048 LM head), memory-bandwidth bound for one token and
compute bound for a block of many. This script times one layer's linears (real shapes, random weights)
for 1, 9 and 65 rows and the LM head, and combines them with the exact forward counts of the benchmark
story (``benchmarks/bench_pipeline.py``: 150 reasoning tokens, 5 events of a 30-token caption, 64 + 8
query tokens): the official way feeds every token alone; the default way feeds the free tokens alone
and each forced block in one forward, checking every block row through the LM head. Attention over
a few hundred cached tokens and the prefill (the same in both ways) are left out, so the printed ratio
is an upper bound of what the exact fast paths can give at real size on CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.official_layout import SIZES  # noqa: E402


def story_counts(spec) -> dict:
    """Tokens of the benchmark story (``story_script``): reasoning, </think>, per event <|gen|> caption
    <t5> q.. </t5> <aud> r.. </aud> </|gen|>, then <|im_end|>."""
    per_event = spec.caption_tokens + 1 + (spec.n_semantic + 2) + (spec.n_residual + 2) + 1
    tokens = spec.reasoning_tokens + 1 + spec.events * per_event + 1
    forced = spec.events * (spec.n_semantic + 1 + spec.n_residual + 1)
    return {"tokens": tokens, "forced": forced, "free": tokens - forced}


def _time(fn, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    spec = SIZES["real"]
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    h, kv = spec.hidden, spec.hidden // spec.heads * spec.kv_heads
    g = torch.Generator().manual_seed(0)
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (spec.ffn, h), (spec.ffn, h), (h, spec.ffn)]
    layer = [torch.randn(o, i, generator=g).to(dt) for o, i in shapes]
    head = torch.randn(spec.qwen_vocab, h, generator=g).to(dt)

    def layer_s(n: int) -> float:
        x, xf = torch.randn(n, h).to(dt), torch.randn(n, spec.ffn).to(dt)
        return _time(lambda: [torch.nn.functional.linear(xf if w.shape[1] == spec.ffn else x, w) for w in layer],
                     args.repeats)

    def head_s(n: int) -> float:
        x = torch.randn(n, h).to(dt)
        return _time(lambda: torch.nn.functional.linear(x, head), args.repeats)

    sem, res = spec.n_semantic + 1, spec.n_residual + 1          # rows fed after <t5> / <aud>
    step = spec.layers * layer_s(1) + head_s(1)
    block = {k: spec.layers * layer_s(k) + head_s(k) for k in (sem, res)}
    c = story_counts(spec)
    official = c["tokens"] * step
    default = c["free"] * step + spec.events * (block[sem] + block[res])
    free_only = c["free"] * step
    print(f"real size, {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"story: {c['tokens']} tokens ({c['free']} free, {c['forced']} forced); forwards: official "
          f"{c['tokens']}, default {c['free']} (+{2 * spec.events} of them blocks)")
    print(f"one-token step {step:.3f} s; block of {sem} rows {block[sem]:.3f} s "
          f"({block[sem] / step:.2f} steps); block of {res} rows {block[res]:.3f} s ({block[res] / step:.2f} steps)")
    print(f"plan without prefill: official {official:.0f} s, default {default:.0f} s -> speed-up bound "
          f"{official / default:.2f}x (free tokens alone: {free_only:.0f} s = {free_only / default:.0%} of the "
          f"default; if blocks were free: {official / free_only:.2f}x)")
    return {"step": step, "block": block, "counts": c, "ratio": official / default,
            "free_share": free_only / default}


if __name__ == "__main__":
    main()
