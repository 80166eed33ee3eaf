"""Headless command line: ``python -m audiostory_core generate|plan|download ...``."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import AudioStoryError, GenerationInterrupted
from .common import add_model_args, add_plan_args, lead, pipeline, tqdm_hooks
from .media import COMMANDS as _MEDIA_COMMANDS, add_parsers as _add_media_parsers  # dub, continue


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m audiostory_core", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="instruction -> long audio")
    add_model_args(g)
    add_plan_args(g)
    g.add_argument("--out", required=True, help="output .wav or .flac")
    g.add_argument("--plan", help="use this plan JSON (edited or hand-written) instead of planning")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--guidance", type=float, default=4.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--noise", choices=["reference", "seeded"], default="seeded",
                   help="reference = official noise (seed 0, same for every clip); seeded = seed + event index")
    g.add_argument("--sampler", choices=["euler", "heun", "dpmpp", "unipc"], default="euler")
    g.add_argument("--sample-rate", type=int, default=32000, help="32000 (reference) or 44100 (VAE rate)")
    g.add_argument("--crossfade", type=float, default=3.0)
    g.add_argument("--crossfade-curve", choices=["linear", "equal_power"], default="linear")
    g.add_argument("--dump", help="also write plan.json, tokens.safetensors, latents.safetensors and the wav here")
    g.add_argument("--quiet", action="store_true")

    p = sub.add_parser("plan", help="print the story plan as JSON")
    add_model_args(p)
    add_plan_args(p)
    p.add_argument("--seed", type=int, default=0)

    _add_media_parsers(sub, add_model_args)

    d = sub.add_parser("download", help="fetch the public weights into the official layout")
    d.add_argument("--models", required=True)
    d.add_argument("--only", nargs="*", help="subset of: audiostory qwen t5 vae")
    return ap




def _write_dump(folder: Path, result, out_name: str) -> None:
    """Write the dump into a temporary folder first, then move the files in (no half-written dump)."""
    from safetensors.torch import save_file

    from ..stages.audio import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".dump-") as tmp:
        t = Path(tmp)
        (t / "plan.json").write_text(result.plan.to_json())
        save_file({"semantic": result.tokens.semantic.float().cpu().contiguous(),
                   "residual": result.tokens.residual.float().cpu().contiguous(),
                   "fused": result.tokens.fused.float().cpu().contiguous()}, str(t / "tokens.safetensors"))
        save_file({"latents": result.latents.float().cpu().contiguous()}, str(t / "latents.safetensors"))
        write_audio(t / out_name, result.audio, result.sample_rate)
        for f in ("plan.json", "tokens.safetensors", "latents.safetensors", out_name):
            os.replace(t / f, folder / f)


def cmd_generate(args) -> int:
    from ..stages.plan import StoryPlan
    from ..stages.audio import write_audio

    plan = None
    if args.plan:
        try:
            text = Path(args.plan).read_text()
        except OSError as e:
            raise AudioStoryError(f"Cannot read plan {args.plan}: {e}") from e
        plan = StoryPlan.from_json(text)
    elif not args.instruction or args.duration is None:
        raise AudioStoryError("generate needs --instruction and --duration (or --plan).")
    pipe = pipeline(args)
    if plan is not None:
        too_long = [i + 1 for i, d in enumerate(plan.durations)
                    if d + (args.crossfade if i < len(plan.durations) - 1 else 0) > pipe.max_clip_seconds]
        if too_long:
            raise AudioStoryError(f"Plan events {too_long} are longer than one clip can hold "
                                  f"({pipe.max_clip_seconds:.2f} s including the {args.crossfade} s crossfade).")
    hooks, close = tqdm_hooks(not args.quiet)
    try:
        res = pipe.generate(args.instruction or "", args.duration or 0.0, plan=plan, steps=args.steps,
                            guidance=args.guidance, seed=args.seed, noise=args.noise, sampler=args.sampler,
                            sample_rate=args.sample_rate, crossfade=args.crossfade, curve=args.crossfade_curve,
                            max_new_tokens=args.max_new_tokens, lead=lead(args), hooks=hooks)
    finally:
        close()
    for p in res.problems:
        print(f"warning: {p}", file=sys.stderr)
    out = Path(args.out)
    if args.dump:
        _write_dump(Path(args.dump), res, out.name if out.suffix.lower() in (".wav", ".flac") else "story.wav")
    write_audio(out, res.audio, res.sample_rate)
    n = res.audio.shape[-1]
    print(f"wrote {out} ({n / res.sample_rate:.2f} s, {res.sample_rate} Hz, {len(res.plan.events)} events)",
          file=sys.stderr)
    return 0


def cmd_plan(args) -> int:
    if not args.instruction or args.duration is None:
        raise AudioStoryError("plan needs --instruction and --duration.")
    pipe = pipeline(args, dit=False, vae=False)
    hooks, close = tqdm_hooks(True)
    try:
        res = pipe.plan(args.instruction, args.duration, args.max_new_tokens, lead(args), hooks)
    finally:
        close()
    print(res.plan.to_json())
    return 0


def cmd_download(args) -> int:
    from ..models.download import download_all

    download_all(Path(args.models), args.only)
    return 0


COMMANDS = {"generate": cmd_generate, "plan": cmd_plan, "download": cmd_download}

COMMANDS.update(_MEDIA_COMMANDS)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GenerationInterrupted:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except AudioStoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
