"""Host memory and time to load a model root on CPU, one subprocess per load.

Peak RSS is the kernel's high-water mark (``VmHWM`` in /proc/self/status, mapped file pages included)
of a fresh process that only loads the models, so each row is measured on its own. For each dtype the
first load runs with an empty null-embedding cache (T5 runs once), the later load reuses it.

    # a real-size random root in the official layout (benchmarks/official_layout.py), then the table:
    python -c "from pathlib import Path; from benchmarks.official_layout import SIZES, write_random_checkpoint; \
write_random_checkpoint(Path('/tmp/as-real'), SIZES['real'])"
    python benchmarks/bench_load_memory.py --models /tmp/as-real --dtypes bf16 fp32 [--cold]

Then a table of each stage of :func:`load_models` (its ``on_stage`` hook): the peak during the stage
(the kernel's high-water mark is reset between stages) and the RSS after it.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.rss import status_bytes  # noqa: E402

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _vm(field: str) -> float:
    """A /proc/self/status field in GB (Linux only: the per-stage peaks need /proc)."""
    value = status_bytes(field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/self/status (this benchmark needs Linux)")
    return value / 1e9


def _reset_peak() -> None:
    """Start a new high-water mark (``5`` to clear_refs resets VmHWM, Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(models: str, dtype: str) -> None:
    """Load everything once and print one JSON line: seconds, peak and final RSS, and per stage."""
    import torch

    from audiostory_core.models.config import locate
    from audiostory_core.models.loading import load_models

    stages: list[dict] = []
    peak = _vm("VmHWM")
    _reset_peak()
    t = last = time.perf_counter()

    def on_stage(name: str) -> None:
        nonlocal peak, last
        now = time.perf_counter()
        stage_peak = _vm("VmHWM")
        peak = max(peak, stage_peak)
        stages.append({"stage": name, "peak_gb": stage_peak, "rss_gb": _vm("VmRSS"), "seconds": now - last})
        _reset_peak()
        last = time.perf_counter()

    m = load_models(locate(models), getattr(torch, DTYPES[dtype]), "cpu", on_stage=on_stage)
    seconds = time.perf_counter() - t
    peak = max(peak, _vm("VmHWM"))
    params = sum(p.numel() * p.element_size() for mod in (m.planner.llm, m.planner.heads, m.dit, m.vae)
                 for p in mod.parameters())
    print(json.dumps({"seconds": seconds, "peak_gb": peak, "rss_gb": _vm("VmRSS"),
                      "weights_gb": params / 1e9, "warnings": len(m.warnings), "stages": stages}))


def drop_page_cache() -> None:
    """Empty the kernel's page cache so the next load reads the checkpoint from disk (root, Linux)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1")
    except OSError as e:
        raise SystemExit(f"--cold needs root on Linux to write /proc/sys/vm/drop_caches: {e}")


def run(models: str, dtype: str, cache: str) -> dict:
    env = dict(os.environ, AUDIOSTORY_CACHE=cache, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, "--child", "--models", models, "--dtypes", dtype],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"load in {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="model root in the official layout")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each first load (root): its time is then a cold read")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.models, args.dtypes[0])
        return
    bin_gb = sum(f.stat().st_size for f in Path(args.models).rglob("pytorch_model.bin")) / 1e9
    print(f"model root {args.models} (pytorch_model.bin {bin_gb:.1f} GB), CPU, one subprocess per load; "
          f"first load from a {'cold' if args.cold else 'warm'} page cache")
    print(f"{'dtype':6} {'weights GB':>10} {'first: peak RSS GB':>19} {'first s':>8} "
          f"{'later: peak RSS GB':>19} {'later s':>8}")
    loads = []
    for dt in args.dtypes:
        with tempfile.TemporaryDirectory(prefix="bench-load-cache-") as cache:
            if args.cold:
                drop_page_cache()
            first = run(args.models, dt, cache)
            later = run(args.models, dt, cache)
        loads += [(f"{dt} first", first), (f"{dt} later", later)]
        print(f"{dt:6} {first['weights_gb']:10.2f} {first['peak_gb']:19.2f} {first['seconds']:8.1f} "
              f"{later['peak_gb']:19.2f} {later['seconds']:8.1f}", flush=True)
    print("\nper stage: peak RSS GB during the stage / RSS GB after it / seconds")
    names = [s["stage"] for s in loads[0][1]["stages"]]
    print(f"{'load':11} " + " ".join(f"{n:>20}" for n in names))
    for label, r in loads:
        cells = {s["stage"]: f"{s['peak_gb']:.2f} / {s['rss_gb']:.2f} / {s['seconds']:.0f}" for s in r["stages"]}
        print(f"{label:11} " + " ".join(f"{cells.get(n, '-'):>20}" for n in names))


if __name__ == "__main__":
    main()
