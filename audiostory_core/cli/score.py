"""``score``: CLAP score of every event against its caption, printed as a table and written into plan.json."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..models.folders import CLAP


def add_score_args(p: argparse.ArgumentParser, standalone: bool = True) -> None:
    """CLAP options; ``generate --score`` shares all but the plan/audio inputs."""
    p.add_argument("--clap", default=CLAP.default,
                   help="CLAP folder name under --models (clap-htsat-unfused, larger_clap_general) or a path")
    p.add_argument("--threshold", type=float, default=0.25,
                   help="events under this score are marked and suggested for --reroll")
    if standalone:
        p.add_argument("--models", required=True, help="model root that holds the CLAP folder")
        p.add_argument("--plan", required=True, help="plan.json of the story (scores are written into it)")
        p.add_argument("--audio", required=True, help="the story rendered from that plan (wav/flac)")
        p.add_argument("--crossfade", type=float, default=None,
                       help="crossfade the story was joined with (default: from a scored plan, else 3.0)")
        p.add_argument("--device", default="auto")
        p.add_argument("--no-write", action="store_true", help="print the table only")


def add_parser(sub) -> None:
    s = sub.add_parser("score", help="CLAP score per event (clip vs caption) and story vs instruction")
    add_score_args(s)


def run_score(models: Optional[str], clap: str, plan, audio, sample_rate: int, crossfade: float,
              device: str = "auto", threshold: float = 0.25, plan_path: Optional[Path] = None):
    """Load CLAP, score, print the table (stdout) and write into ``plan_path`` when given."""
    from ..pipeline import resolve_device
    from ..tasks.reroll import format_events
    from ..tasks.score import ClapScorer, locate_clap, score_story, scores_table, write_scores

    scorer = ClapScorer.from_pretrained(locate_clap(models, clap), resolve_device(device))
    scores = score_story(scorer, plan, audio, sample_rate, crossfade)
    print(scores_table(plan, scores, threshold))
    weak = scores.below(threshold)
    if weak:
        print(f"events under {threshold:g}: {format_events(weak)}  (re-render them with --reroll "
              f"{format_events(weak)})")
    if plan_path is not None:
        write_scores(plan_path, scores, crossfade)
        print(f"scores written into {plan_path}", file=sys.stderr)
    return scores


def cmd_score(args) -> int:
    import json

    from ..stages.audio import read_audio
    from ..stages.plan import StoryPlan
    from ..validation import check_input_file, read_text_file

    path = check_input_file(args.plan, "--plan")
    text = read_text_file(path, "--plan")
    plan = StoryPlan.from_json(text)
    crossfade = args.crossfade
    if crossfade is None:
        crossfade = float((json.loads(text).get("scores") or {}).get("crossfade", 3.0))   # bounded just above
    audio, sr = read_audio(args.audio)
    run_score(args.models, args.clap, plan, audio, sr, crossfade, args.device, args.threshold,
              None if args.no_write else path)
    return 0


COMMANDS = {"score": cmd_score}
