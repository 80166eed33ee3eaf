"""``generate --reuse DUMP --reroll 2,4``: re-render chosen events of a dumped story; ``generate --score``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import InputError


def add_reroll_args(g: argparse.ArgumentParser) -> None:
    """Arguments appended to ``generate``."""
    from .score import add_score_args

    g.add_argument("--reuse", metavar="DUMP_DIR",
                   help="a folder written by --dump: keep its events' latents and re-render only --reroll")
    g.add_argument("--reroll", metavar="EVENTS",
                   help="events to re-render with --reuse, 1-based: '2,4', '2-4' or 'all'")
    g.add_argument("--reroll-seed", type=int, default=None,
                   help="seed of the re-rendered events (event i gets seed+i-1 with --noise seeded; "
                        "default: the dump's seed + 1)")
    g.add_argument("--score", action="store_true",
                   help="score every event with CLAP, print a table and write the scores into plan.json "
                        "(the --dump one, else <out>.plan.json)")
    add_score_args(g, standalone=False)


def cmd_reroll(args, pipeline: Callable, write_dump: Callable) -> int:
    """Re-render ``--reroll`` events of the ``--reuse`` dump and write the restitched story."""
    from ..stages.audio import write_audio
    from ..tasks.reroll import dump_settings, edited_events, format_events, parse_events, read_dump, reroll
    from .common import output_level, read_plan, settings, tqdm_hooks

    if not args.reuse or args.reroll is None:
        raise InputError("A re-roll needs both --reuse DUMP_DIR (a --dump folder) and --reroll EVENTS (e.g. 2,4).")
    dump = read_dump(args.reuse)
    plan = dump.plan
    if args.plan:
        plan = read_plan(args.plan)
    render = parse_events(args.reroll, len(plan.events))
    if not render:
        raise InputError("--reroll names no event; give the events to re-render, e.g. --reroll 2,4.")
    edited = edited_events(plan, dump.plan)
    crossfade = float(dump.settings.get("crossfade", args.crossfade))
    if abs(crossfade - args.crossfade) > 1e-9:
        raise InputError(f"The dump was rendered with a {crossfade:g} s crossfade and its clips only fit that; "
                         f"pass --crossfade {crossfade:g}.")
    seed = args.reroll_seed if args.reroll_seed is not None else int(dump.settings.get("seed", args.seed)) + 1
    s = settings(args, crossfade=crossfade, seed=seed)
    pipe = pipeline(args, planner=bool(edited))
    hooks, close = tqdm_hooks(not args.quiet)
    try:
        res = reroll(pipe, plan, dump.tokens, dump.latents, render, previous_plan=dump.plan, **s.render_kwargs(),
                     hooks=hooks)
    finally:
        close()
    for p in res.problems:
        print(f"warning: {p}", file=sys.stderr)
    out = Path(args.out)
    if args.dump:
        write_dump(Path(args.dump), res, _audio_name(out), dump_settings(replace(s, sample_rate=res.sample_rate)))
    write_audio(out, output_level(args, res.audio, res.sample_rate), res.sample_rate)
    if args.stems:
        from .common import write_result_stems

        write_result_stems(args.stems, res.clips, res.plan, res.sample_rate, s.crossfade, s.crossfade_curve)
    print(f"re-rendered events {format_events(render)} (seed {seed}, {s.steps} steps); kept "
          f"{len(plan.events) - len(render)} events; wrote {out}", file=sys.stderr)
    if args.score:
        score_generated(args, res, out, crossfade)
    return 0


def _audio_name(out: Path) -> str:
    return out.name if out.suffix.lower() in (".wav", ".flac") else "story.wav"


def score_generated(args, res, out: Path, crossfade: float) -> None:
    """``generate --score``: score the story just written and put the scores into its plan.json."""
    from .score import run_score

    plan_path = Path(args.dump) / "plan.json" if args.dump else out.with_suffix(".plan.json")
    if not args.dump:
        from ..atomic import write_text_atomic

        write_text_atomic(plan_path, res.plan.to_json())
    run_score(args.models, args.clap, res.plan, res.audio, res.sample_rate, crossfade, args.device,
              args.threshold, plan_path)
