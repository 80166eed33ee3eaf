#!/usr/bin/env bash
# One command for a session that gets a GPU (device tool, ~15 min budget in all):
#   bash benchmarks/gpu_run.sh            # real sizes, fast vs reference, + low-VRAM column
# Prints the card, versions and the markdown table; writes $OUT/bench_real.json when $OUT is set.
# Budget: writing the ~15 GB random fp32 checkpoint ~1 min, cold start ~1 min, torch.compile
# warm-up 1-3 min, the reference story ~30 s. If compile time is the problem, rerun with
#   BENCH_ARGS="--no-compile" bash benchmarks/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
OUT="${OUT:-/tmp}"
WORK="${BENCH_WORKDIR:-/tmp/audiostory-bench}"
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| diffusers', diffusers.__version__)"
python -u benchmarks/bench_pipeline.py --size real --device cuda --steps 50 --repeats 2 --low-vram \
    --workdir "$WORK" --json "$OUT/bench_real.json" ${BENCH_ARGS:-} 2>&1 | grep -v -i "warn" | tee "$OUT/bench_real.txt"
