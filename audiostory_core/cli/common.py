"""What every CLI command shares: model arguments, the pipeline built from them, tqdm progress."""
from __future__ import annotations

import argparse
import sys


def tqdm_hooks(enabled: bool = True):
    """Hooks that draw one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    from ..progress import Hooks

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, leave=False, file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.refresh()
        if stage != "plan" and done >= total:
            bar.close()

    def close() -> None:
        for b in bars.values():
            b.close()

    return Hooks(progress=progress), close


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, help="model root (holds AudioStory-3B/, Flux_detokenizer/, ...)")
    p.add_argument("--audiostory-dir", help="override: folder with config.yaml + pytorch_model.bin")
    p.add_argument("--flux-dir", help="override: Flux_detokenizer folder")
    p.add_argument("--qwen-dir", help="override: Qwen2.5-3B-Instruct folder")
    p.add_argument("--t5-dir", help="override: flan-t5-large folder")
    p.add_argument("--tokenizer-dir", help="override: tokenizer folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = fp16 on GPU (as the official code), fp32 on CPU")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instruction", help="the story to tell")
    p.add_argument("--duration", type=float, help="total duration in seconds")
    p.add_argument("--max-new-tokens", type=int, default=1600)
    p.add_argument("--lead-phrase", default="none",
                   help="none (instruction verbatim), random (inference.py with --seed), or an index 0-19")


def pipeline(args, planner=True, dit=True, vae=True):
    from ..models.config import locate
    from ..models.loading import load_models
    from ..pipeline import AudioStoryPipeline, resolve_device, resolve_dtype

    paths = locate(args.models, audiostory_dir=args.audiostory_dir, flux_dir=args.flux_dir,
                   qwen_dir=args.qwen_dir, t5_dir=args.t5_dir, tokenizer_dir=args.tokenizer_dir)
    dev = resolve_device(args.device)
    return AudioStoryPipeline(load_models(paths, resolve_dtype(args.dtype, dev), dev, planner=planner,
                                          dit=dit, vae=vae))


def lead(args) -> str:
    from ..stages.grammar import lead_phrase

    return lead_phrase(args.lead_phrase, getattr(args, "seed", 0))
