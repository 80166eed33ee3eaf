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
    p.add_argument("--strict", action="store_true",
                   help="checkpoint keys that belong to no AudioStory module are an error (default: a warning)")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instruction", help="the story to tell")
    p.add_argument("--duration", type=float, help="total duration in seconds")
    add_decode_args(p)


def add_decode_args(p: argparse.ArgumentParser) -> None:
    """How the planner decodes: every command that plans a story has these."""
    p.add_argument("--max-new-tokens", type=int, default=1600)
    p.add_argument("--lead-phrase", default="none",
                   help="none (instruction verbatim), random (inference.py with --seed), or an index 0-19")


def add_render_args(p: argparse.ArgumentParser, seed_help: str = "seed of the per-event noise") -> None:
    """Sampling, output and progress options: one definition for generate, dub, continue and batch."""
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--noise", choices=["reference", "seeded"], default="seeded",
                   help="reference = official noise (seed 0, same for every clip); seeded = seed + event index")
    p.add_argument("--sampler", choices=["euler", "heun", "dpmpp", "unipc"], default="euler")
    p.add_argument("--sample-rate", type=int, default=32000, help="32000 (reference) or 44100 (VAE rate)")
    p.add_argument("--crossfade", type=float, default=3.0)
    p.add_argument("--crossfade-curve", choices=["linear", "equal_power"], default="linear")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="apply a DiT LoRA from `train` at a strength (default 1; 0 = off), in memory (repeatable)")


def pipeline(args, planner=True, dit=True, vae=True):
    from ..models.config import locate
    from ..models.loading import load_models
    from ..pipeline import AudioStoryPipeline, resolve_device, resolve_dtype
    from ..training.lora_files import apply_lora, read_loras

    paths = locate(args.models, audiostory_dir=args.audiostory_dir, flux_dir=args.flux_dir,
                   qwen_dir=args.qwen_dir, t5_dir=args.t5_dir, tokenizer_dir=args.tokenizer_dir)
    dev = resolve_device(args.device)
    loras = read_loras(getattr(args, "lora", None) or [])   # checked before anything loads
    models = load_models(paths, resolve_dtype(args.dtype, dev), dev, planner=planner, dit=dit, vae=vae,
                         strict=getattr(args, "strict", False))
    for w in models.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if loras and models.dit is not None:
        for lf, strength in loras:
            apply_lora(models.dit, lf, strength)
    return AudioStoryPipeline(models)


def lead(args) -> str:
    from ..stages.grammar import lead_phrase

    return lead_phrase(args.lead_phrase, getattr(args, "seed", 0))


def check_args(args) -> None:
    """Every plain argument a command has (range, finiteness, device, lead phrase), before anything loads.

    Arguments a command lacks are skipped, so every subcommand can call this first.
    """
    from .. import validation as v

    get = lambda name: getattr(args, name, None)  # noqa: E731
    if get("steps") is not None:
        v.check_steps(args.steps)
    if get("guidance") is not None:
        v.check_guidance(args.guidance)
    if get("seed") is not None:
        v.check_seed(args.seed)
    if get("sample_rate") is not None:
        v.check_sample_rate(args.sample_rate)      # the CLI has no "0 = VAE rate": say 44100
    if get("crossfade") is not None:
        v.check_crossfade(args.crossfade)
    if get("max_new_tokens") is not None:
        v.check_max_new_tokens(args.max_new_tokens)
    if get("lead_phrase") is not None:
        v.check_lead_phrase(args.lead_phrase, get("seed") or 0)
    if get("duration") is not None:
        v.check_total_duration(args.duration, "--duration")
    if get("instruction") is not None:
        v.check_instruction(args.instruction)
    if get("device") is not None:
        v.check_device(args.device)


def model_paths(args):
    """Locate the model files (reads two small configs, loads nothing)."""
    from ..models.config import locate

    return locate(args.models, audiostory_dir=args.audiostory_dir, flux_dir=args.flux_dir,
                  qwen_dir=args.qwen_dir, t5_dir=args.t5_dir, tokenizer_dir=args.tokenizer_dir)


def clip_window(args) -> float:
    """Longest clip of this model root in seconds, without loading it."""
    from ..tasks.dubbing import max_clip_seconds_for

    return max_clip_seconds_for(model_paths(args))


def read_plan(path: str):
    """A plan JSON file, checked against every plan limit (loads no model)."""
    from ..errors import InputError
    from ..stages.plan import StoryPlan
    from ..validation import check_input_file

    p = check_input_file(path, "--plan")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read plan {path}: {e}") from e
    return StoryPlan.from_json(text)
