"""Headless command line: ``python -m audiostory_core generate|plan|download ...`` (installed: ``audiostory ...``)."""
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
from ..models.download import KEYS, SOURCES
from .common import (add_loudness_args, add_model_args, add_plan_args, add_render_args, add_setting_arg, add_stems_arg,
                     check_args, check_loudness, clip_window, lead, output_level, pipeline, read_plan, settings,
                     tqdm_hooks, write_result_stems)
from .media import COMMANDS as _MEDIA_COMMANDS, add_parsers as _add_media_parsers  # dub, continue
from .batch import COMMANDS as _BATCH_COMMANDS, add_parser as _add_batch_parser  # batch
from .reroll import add_reroll_args, cmd_reroll, score_generated  # generate --reuse/--reroll/--score
from .score import COMMANDS as _SCORE_COMMANDS, add_parser as _add_score_parser  # score
from .train import COMMANDS as _TRAIN_COMMANDS, add_parser as _add_train_parser  # train


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m audiostory_core", description=__doc__,
                                 epilog="Anywhere on the command line: --verbose shows the libraries' warnings "
                                        "(hidden by default), --debug the traceback of an unexpected error.")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="instruction -> long audio")
    add_model_args(g)
    add_plan_args(g)
    g.add_argument("--out", required=True, help="output .wav or .flac")
    g.add_argument("--plan", help="use this plan JSON (edited or hand-written) instead of planning")
    add_render_args(g)
    add_loudness_args(g)
    g.add_argument("--dump", help="also write plan.json, tokens.safetensors, latents.safetensors and the wav here")
    add_reroll_args(g)
    add_stems_arg(g)

    p = sub.add_parser("plan", help="print the story plan as JSON")
    add_model_args(p)
    add_plan_args(p)
    add_setting_arg(p, "seed", "seed of --lead-phrase random")

    _add_media_parsers(sub, add_model_args)
    _add_batch_parser(sub, add_model_args)
    _add_score_parser(sub)
    _add_train_parser(sub, add_model_args)

    d = sub.add_parser("download", help="fetch the public weights into the official layout")
    d.add_argument("--models", required=True)
    d.add_argument("--only", nargs="*", choices=KEYS, metavar="KEY",
                   help=f"subset of: {' '.join(KEYS)} ({', '.join(k.key for k in SOURCES if k.optional)} "
                        "only when named)")
    d.add_argument("--shared-models", metavar="DIR",
                   help="folder for the components every model root shares (clap, vlm, whisper), e.g. "
                        "ComfyUI's models/audiostory; default: --models")
    d.add_argument("--revision", action="append", default=[], metavar="KEY=REV",
                   help="pin one repo to a branch, tag or commit, e.g. audiostory=<commit> (repeatable)")
    return ap




def _write_dump(folder: Path, result, out_name: str, settings: Optional[dict] = None) -> None:
    """Write the dump into a temporary folder first, then move the files in (no half-written dump)."""
    from safetensors.torch import save_file

    from ..atomic import commit
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
            commit(t / f, folder / f)      # fsync, rename, fsync the folder


DUMP_FILES = ("plan.json", "tokens.safetensors", "latents.safetensors")


def _dump_audio_name(out: Path) -> str:
    return out.name if out.suffix.lower() in (".wav", ".flac") else "story.wav"


def check_generate_args(args):
    """Everything ``generate`` can check without models: arguments, output paths, the plan file.

    Returns the parsed plan (or None). Clip lengths are checked against the model's clip window, read
    from its small config, so a plan that cannot be rendered fails before anything loads.
    """
    from ..errors import InputError
    from ..tasks.stems import CUE_FILES
    from ..validation import (AUDIO_FORMATS, check_output_file, check_output_folder, check_outside_input_folder,
                              clip_problems)

    check_args(args)
    check_loudness(args)
    inputs = [args.plan]
    out = check_output_file(args.out, formats=AUDIO_FORMATS, inputs=inputs, what="--out")
    check_outside_input_folder(out, args.reuse, "--out", "the --reuse folder")
    if args.dump:
        check_output_folder(args.dump, files=DUMP_FILES + (_dump_audio_name(out),), inputs=inputs, what="--dump")
        check_outside_input_folder(args.dump, args.reuse, "--dump", "the --reuse folder")
    if args.stems:
        check_output_folder(args.stems, files=CUE_FILES, inputs=inputs + [args.reuse], what="--stems")
        check_outside_input_folder(args.stems, args.reuse, "--stems", "the --reuse folder")
    if args.reuse or args.reroll is not None:
        check_reuse_story(args)
        return None
    plan = None
    if args.plan:
        plan = read_plan(args.plan)
    elif args.instruction is None or args.duration is None:
        raise InputError("generate needs --instruction and --duration (or --plan).")
    if plan is not None:
        clip_problems(plan.durations, args.crossfade, clip_window(args))   # errors now; warnings come with the result
    return plan


def check_reuse_story(args) -> None:
    """``--reuse`` renders the dump's story: an ``--instruction``/``--duration`` that differs from it would be
    silently ignored, so it is refused (the same values, e.g. an edited earlier command line, are fine)."""
    from ..errors import InputError
    from ..stages.plan import StoryPlan
    from ..validation import read_text_file

    if not args.reuse or (args.instruction is None and args.duration is None):
        return
    dumped = Path(args.reuse) / "plan.json"
    if not dumped.is_file():
        return          # read_dump names the missing files
    plan = StoryPlan.from_json(read_text_file(dumped, "the --reuse plan"))
    total = plan.total_duration if plan.total_duration is not None else sum(plan.durations)
    # the plan keeps the built instruction (lead phrase + text + "The total duration is ..."): the text is in it
    if args.instruction is not None and args.instruction.strip() not in plan.instruction:
        raise InputError("--instruction differs from the story in the --reuse dump, which --reuse renders as it "
                         "is. Drop --instruction (edit events with --plan PLAN.json), or render a new story "
                         "without --reuse.")
    if args.duration is not None and abs(float(args.duration) - float(total)) > 1e-6:
        raise InputError(f"--duration {args.duration:g} differs from the --reuse dump's {total:g} s story, which "
                         "--reuse renders as it is. Drop --duration, or render a new story without --reuse.")


def cmd_generate(args) -> int:
    from ..stages.audio import write_audio

    plan = check_generate_args(args)
    if args.reuse or args.reroll is not None:
        return cmd_reroll(args, pipeline, _write_dump)
    pipe = pipeline(args)
    hooks, close = tqdm_hooks(not args.quiet)
    s = settings(args)
    try:
        res = pipe.generate(args.instruction or "", args.duration or 0.0, plan=plan, **s.render_kwargs(),
                            max_new_tokens=s.max_new_tokens, lead=lead(args), hooks=hooks)
    finally:
        close()
    for p in res.problems:
        print(f"warning: {p}", file=sys.stderr)
    if plan is not None:               # which events of the given plan got new conditioning, and why
        from ..stages.event_tokens import reencoding_reasons
        from ..stages.plan import describe_reencoding

        print(describe_reencoding(reencoding_reasons(pipe.models.planner, plan)), file=sys.stderr)
    out = Path(args.out)
    if args.dump:
        from dataclasses import replace

        from ..tasks.reroll import dump_settings

        _write_dump(Path(args.dump), res, _dump_audio_name(out),
                    dump_settings(replace(s, sample_rate=res.sample_rate)))
    write_audio(out, output_level(args, res.audio, res.sample_rate), res.sample_rate)
    n = res.audio.shape[-1]
    print(f"wrote {out} ({n / res.sample_rate:.2f} s, {res.sample_rate} Hz, {len(res.plan.events)} events)",
          file=sys.stderr)
    if args.stems:
        write_result_stems(args.stems, res.clips, res.plan, res.sample_rate, args.crossfade, args.crossfade_curve)
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
            raise AudioStoryError(f"--revision takes KEY=REV (KEY: {', '.join(KEYS)}), got {item!r}.")
        revisions[key] = rev
    download_all(Path(args.models), args.only, revisions,
                 shared_root=Path(args.shared_models) if args.shared_models else None)
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


# Dependency chatter a user cannot act on (deprecation notices, load reports); ``--verbose`` shows it.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}
QUIET_WARNING_MODULES = r"(torch|torchaudio|transformers|diffusers|huggingface_hub|accelerate|peft)(\.|$)"


def quiet_dependencies(command: str) -> None:
    """Silence the libraries' warnings and their own progress bars (the CLI draws one line per stage).

    Set before the libraries are imported (they read the environment once). ``download`` keeps the
    Hugging Face download bars: they are its progress.
    """
    import warnings

    env = dict(QUIET_ENV)
    if command != "download":
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for k, v in env.items():
        os.environ.setdefault(k, v)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_WARNING_MODULES)


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command. Exit codes: 0 done, 2 a user error (one ``error:`` line, nothing written),
    130/143 interrupted by Ctrl-C/SIGTERM (nothing written), 1 an unexpected failure (a bug:
    ``--debug`` anywhere on the command line shows its traceback; ``--verbose`` the libraries'
    warnings, hidden by default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    verbose = "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:        # argparse already printed the usage and the problem
        return int(e.code or 0)
    if not verbose:
        quiet_dependencies(args.command)
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
