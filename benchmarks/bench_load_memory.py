"""Host memory and time to load a model root on CPU, one subprocess per load.

Peak RSS is the kernel's high-water mark (``VmHWM`` in /proc/self/status, mapped file pages included)
of a fresh process that only loads the models, so each row is measured on its own. For each dtype the
first load runs with an empty null-embedding cache (T5 runs once), the later load reuses it.

    # a real-size random root in the official layout (benchmarks/official_layout.py), then the table:
    python -c "from pathlib import Path; from benchmarks.official_layout import SIZES, write_random_checkpoint; \
write_random_checkpoint(Path('/tmp/as-real'), SIZES['real'])"
    python benchmarks/bench_load_memory.py --models /tmp/as-real --dtypes bf16 fp32
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
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _vm(field: str) -> float:
    """A /proc/self/status field in GB (Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(models: str, dtype: str) -> None:
    """Load everything once and print one JSON line: seconds, peak and final RSS."""
    import torch

    sys.path.insert(0, str(REPO))
    from audiostory_core.models.config import locate
    from audiostory_core.models.loading import load_models

    t = time.perf_counter()
    m = load_models(locate(models), getattr(torch, DTYPES[dtype]), "cpu")
    seconds = time.perf_counter() - t
    params = sum(p.numel() * p.element_size() for mod in (m.planner.llm, m.planner.heads, m.dit, m.vae)
                 for p in mod.parameters())
    print(json.dumps({"seconds": seconds, "peak_gb": _vm("VmHWM"), "rss_gb": _vm("VmRSS"),
                      "weights_gb": params / 1e9, "warnings": len(m.warnings)}))


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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.models, args.dtypes[0])
        return
    bin_gb = sum(f.stat().st_size for f in Path(args.models).rglob("pytorch_model.bin")) / 1e9
    print(f"model root {args.models} (pytorch_model.bin {bin_gb:.1f} GB), CPU, one subprocess per load")
    print(f"{'dtype':6} {'weights GB':>10} {'first: peak RSS GB':>19} {'first s':>8} "
          f"{'later: peak RSS GB':>19} {'later s':>8}")
    for dt in args.dtypes:
        with tempfile.TemporaryDirectory(prefix="bench-load-cache-") as cache:
            first = run(args.models, dt, cache)
            later = run(args.models, dt, cache)
        print(f"{dt:6} {first['weights_gb']:10.2f} {first['peak_gb']:19.2f} {first['seconds']:8.1f} "
              f"{later['peak_gb']:19.2f} {later['seconds']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
