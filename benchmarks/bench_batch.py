"""Batch throughput: stories per hour, one ``generate`` process per story vs one batch process.

    python benchmarks/bench_batch.py                                  # shared tiny fixture, CPU
    python benchmarks/bench_batch.py --models models/audiostory/AudioStory --device cuda --steps 50

Stories cycle over the shared fixture's three trained instructions (different seeds), so every plan is
real. Rows: ``generate`` run as a new process per story (models load every time; measured on
``--process-stories`` stories), then one process that loads once and renders every story with
``BatchRunner`` at each ``--max-batch`` under the default speed paths (``PerfOptions()``, what ``batch``
runs), and one ``--reference`` row (the official computation, ``--max-batch 1``). Each batch row also gives
the largest audio difference to the first batch row's outputs (the fast paths and cross-story batching
change float rounding only). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRAINED = [("A thunderstorm rolls over a quiet farm at night.", 12.0),
           ("A fire truck leaves the station with sirens blaring.", 7.5),
           ("A busy morning in a small city cafe.", 14.0)]


def _default_models() -> Path:
    for cand in (ROOT.parent / "shared" / "fixtures" / "audiostory-tiny", Path("/work/shared/fixtures/audiostory-tiny")):
        if (cand / "audiostory" / "config.yaml").is_file():
            return cand
    raise SystemExit("No model root: pass --models (the shared tiny fixture was not found).")


def stories(n: int) -> list[dict]:
    return [{"id": f"story{i:03d}", "instruction": TRAINED[i % 3][0], "duration": TRAINED[i % 3][1], "seed": i}
            for i in range(n)]


def per_process(models: Path, items: list[dict], steps: int, device: str, work: Path) -> float:
    """Seconds per story when every story is its own ``generate`` process (load included)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    for s in items:
        subprocess.run([sys.executable, "-m", "audiostory_core", "generate", "--models", str(models),
                        "--instruction", s["instruction"], "--duration", str(s["duration"]), "--seed",
                        str(s["seed"]), "--steps", str(steps), "--device", device, "--out",
                        str(work / f"{s['id']}.wav"), "--quiet"], check=True, env=env, capture_output=True)
    return (time.perf_counter() - t0) / len(items)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    from audiostory_core.pipeline import AudioStoryPipeline
    from audiostory_core.stages.audio import read_audio
    from audiostory_core.settings import RenderSettings
    from audiostory_core.tasks.batch import BatchRunner, parse_stories

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stories", type=int, default=12)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1, 4, 12])
    ap.add_argument("--process-stories", type=int, default=3, help="stories timed as separate processes (0 = skip)")
    ap.add_argument("--no-reference", action="store_true", help="skip the --reference row")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    models = args.models or _default_models()
    items = stories(args.stories)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        if args.process_stories:
            sec = per_process(models, items[:args.process_stories], args.steps, args.device, work)
            rows.append({"mode": "one generate process per story", "stories": args.process_stories,
                         "load_s": None, "render_s": sec * args.process_stories, "s_per_story": sec,
                         "stories_per_hour": 3600 / sec, "max_diff": None})
        t0 = time.perf_counter()
        pipe = AudioStoryPipeline.from_pretrained(models, device=args.device)
        load = time.perf_counter() - t0
        jobs = parse_stories([json.dumps(s) for s in items], RenderSettings(steps=args.steps)).jobs
        first: Optional[Path] = None
        runs = [("batch --reference, --max-batch 1", AudioStoryPipeline(pipe.models, reference=True), 1)] * \
            (not args.no_reference) + [(f"batch, --max-batch {mb}", pipe, mb) for mb in args.max_batch]
        for i, (mode, p, mb) in enumerate(runs):
            out = work / f"run{i}"
            t0 = time.perf_counter()
            report = BatchRunner(p, out, max_batch=mb).run(jobs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            assert len(report.rendered) == len(jobs), report.failed
            diff = 0.0
            if first is None:
                first = out
            else:
                for j in jobs:
                    a, _ = read_audio(out / f"{j.id}.wav")
                    b, _ = read_audio(first / f"{j.id}.wav")
                    diff = max(diff, (a - b).abs().max().item())
            rows.append({"mode": mode, "stories": len(jobs), "load_s": load, "render_s": sec,
                         "s_per_story": sec / len(jobs), "stories_per_hour": 3600 * len(jobs) / (sec + load),
                         "max_diff": diff if out != first else None})
    print(f"\n{args.stories} stories (3 trained fixture stories, 2-4 events, 7.5-14 s), {args.steps} steps, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| mode | stories timed | model load (s) | render (s) | s / story | stories / hour (load included) "
          "| max audio diff vs the first batch row |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        load = "-" if r["load_s"] is None else f"{r['load_s']:.2f}"
        diff = "-" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        print(f"| {r['mode']} | {r['stories']} | {load} | {r['render_s']:.2f} | {r['s_per_story']:.2f} "
              f"| {r['stories_per_hour']:.0f} | {diff} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
