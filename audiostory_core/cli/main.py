"""Headless command line: ``python -m audiostory_core generate|plan|download ...``."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import AudioStoryError, GenerationInterrupted
from .common import (add_model_args, add_plan_args, add_render_args, check_args, clip_window, lead, pipeline,
                     read_plan, tqdm_hooks)
from .media import COMMANDS as _MEDIA_COMMANDS, add_parsers as _add_media_parsers  # dub, continue
from .batch import COMMANDS as _BATCH_COMMANDS, add_parser as _add_batch_parser  # batch
from .reroll import add_reroll_args, cmd_reroll, score_generated  # generate --reuse/--reroll/--score
from .score import COMMANDS as _SCORE_COMMANDS, add_parser as _add_score_parser  # score
from .train import COMMANDS as _TRAIN_COMMANDS, add_parser as _add_train_parser  # train


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m audiostory_core", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="instruction -> long audio")
    add_model_args(g)
    add_plan_args(g)
    g.add_argument("--out", required=True, help="output .wav or .flac")
    g.add_argument("--plan", help="use this plan JSON (edited or hand-written) instead of planning")
    add_render_args(g)
    g.add_argument("--dump", help="also write plan.json, tokens.safetensors, latents.safetensors and the wav here")
    add_reroll_args(g)

    p = sub.add_parser("plan", help="print the story plan as JSON")
    add_model_args(p)
    add_plan_args(p)
    p.add_argument("--seed", type=int, default=0)

    _add_media_parsers(sub, add_model_args)
    _add_batch_parser(sub, add_model_args)
    _add_score_parser(sub)
    _add_train_parser(sub, add_model_args)

    d = sub.add_parser("download", help="fetch the public weights into the official layout")
    d.add_argument("--models", required=True)
    d.add_argument("--only", nargs="*", help="subset of: audiostory qwen t5 vae clap (clap only when named)")
    d.add_argument("--revision", action="append", default=[], metavar="KEY=REV",
                   help="pin one repo to a branch, tag or commit, e.g. audiostory=<commit> (repeatable)")
    return ap




def _write_dump(folder: Path, result, out_name: str, settings: Optional[dict] = None) -> None:
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
        save_file({"latents": result.latents.float().cpu().contiguous()}, str(t / "latents.safetensors"),
                  metadata=settings)  # generation settings, read back by --reuse
        write_audio(t / out_name, result.audio, result.sample_rate)
        for f in ("plan.json", "tokens.safetensors", "latents.safetensors", out_name):
            os.replace(t / f, folder / f)


DUMP_FILES = ("plan.json", "tokens.safetensors", "latents.safetensors")


def _dump_audio_name(out: Path) -> str:
    return out.name if out.suffix.lower() in (".wav", ".flac") else "story.wav"


def check_generate_args(args):
    """Everything ``generate`` can check without models: arguments, output paths, the plan file.

    Returns the parsed plan (or None). Clip lengths are checked against the model's clip window, read
    from its small config, so a plan that cannot be rendered fails before anything loads.
    """
    from ..errors import InputError
    from ..validation import AUDIO_FORMATS, check_output_file, check_output_folder, clip_problems

    check_args(args)
    inputs = [args.plan]
    out = check_output_file(args.out, formats=AUDIO_FORMATS, inputs=inputs, what="--out")
    if args.dump:
        check_output_folder(args.dump, files=DUMP_FILES + (_dump_audio_name(out),), inputs=inputs, what="--dump")
    if args.reuse or args.reroll is not None:
        return None
    plan = None
    if args.plan:
        plan = read_plan(args.plan)
    elif args.instruction is None or args.duration is None:
        raise InputError("generate needs --instruction and --duration (or --plan).")
    if plan is not None:
        clip_problems(plan.durations, args.crossfade, clip_window(args))   # errors now; warnings come with the result
    return plan


def cmd_generate(args) -> int:
    from ..stages.audio import write_audio

    plan = check_generate_args(args)
    if args.reuse or args.reroll is not None:
        return cmd_reroll(args, pipeline, _write_dump)
    pipe = pipeline(args)
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
        from ..tasks.reroll import dump_settings

        _write_dump(Path(args.dump), res, _dump_audio_name(out),
                    dump_settings(args.crossfade, args.steps, args.guidance, args.seed, args.noise, args.sampler,
                                  res.sample_rate, args.crossfade_curve))
    write_audio(out, res.audio, res.sample_rate)
    n = res.audio.shape[-1]
    print(f"wrote {out} ({n / res.sample_rate:.2f} s, {res.sample_rate} Hz, {len(res.plan.events)} events)",
          file=sys.stderr)
    if args.score:
        score_generated(args, res, out, args.crossfade)
    return 0


def cmd_plan(args) -> int:
    from ..errors import InputError

    if args.instruction is None or args.duration is None:
        raise InputError("plan needs --instruction and --duration.")
    check_args(args)
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

    revisions = {}
    for item in args.revision:
        key, sep, rev = item.partition("=")
        if not sep or not key or not rev:
            raise AudioStoryError(f"--revision takes KEY=REV (KEY: audiostory, qwen, t5, vae), got {item!r}.")
        revisions[key] = rev
    download_all(Path(args.models), args.only, revisions)
    return 0


COMMANDS = {"generate": cmd_generate, "plan": cmd_plan, "download": cmd_download}

COMMANDS.update(_MEDIA_COMMANDS)
COMMANDS.update(_BATCH_COMMANDS)
COMMANDS.update(_SCORE_COMMANDS)
COMMANDS.update(_TRAIN_COMMANDS)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, process managers) turned into an interrupt, so temp files are cleaned up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the CLI runs, SIGTERM unwinds like Ctrl-C: every ``finally`` runs, no ``*.part`` file stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command. Exit codes: 0 done, 2 a user error (one ``error:`` line, nothing written),
    130/143 interrupted by Ctrl-C/SIGTERM (nothing written), 1 an unexpected failure (a bug:
    ``--debug`` anywhere on the command line shows its traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:        # argparse already printed the usage and the problem
        return int(e.code or 0)
    try:
        with sigterm_interrupts():
            return COMMANDS[args.command](args)
    except Terminated:
        print("terminated (SIGTERM): nothing was written", file=sys.stderr)
        return 143
    except (GenerationInterrupted, KeyboardInterrupt):
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except AudioStoryError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:            # disk full, permissions changed during the run ...
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: a short line, the traceback with --debug
        if debug:
            raise
        msg = str(e) if len(str(e)) <= 300 else str(e)[:300] + " ..."
        print(f"error: unexpected {type(e).__name__}: {msg}\nThis is a bug; rerun with --debug for the traceback "
              "and report it.", file=sys.stderr)
        return 1
