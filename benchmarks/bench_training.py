"""DiT LoRA training cost: measured steps/s and peak RSS on CPU at tiny size, and the real size on paper.

    PYTHONPATH=. python benchmarks/bench_training.py [--steps 5]

Tiny size: the ``tiny`` DiT of official_layout.py (random weights, 176 latent frames), batch 1, each setting in
its own process so that the peak RSS (VmHWM) is that setting's. Real size: the DiT is built on the meta device
from the real dims (SIZES["real"]), LoRA layers are injected by peft, and parameter / gradient / AdamW-state
memory is counted from the resulting modules (activations are not included: measure them on a GPU).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiostory_core.models.config import FluxConfig  # noqa: E402
from audiostory_core.models.modules import TOKEN_DIM, AudioStoryDiT  # noqa: E402
from benchmarks.official_layout import SIZES  # noqa: E402

SETTINGS = {"fp32": {}, "bf16 autocast": {"bf16": True}, "grad checkpointing": {"gradient_checkpointing": True}}


def flux_config(size: str) -> FluxConfig:
    s = SIZES[size]
    return FluxConfig(num_layers=s.dit_layers, num_single_layers=s.dit_single_layers,
                      num_attention_heads=s.dit_heads, audio_seq_len=s.audio_seq_len)


def one_setting(name: str, steps: int) -> dict:
    """Train the tiny DiT for ``steps`` steps in this process; steps/s after a warm-up step, peak RSS."""
    from benchmarks.rss import peak_rss_bytes
    from audiostory_core.training.trainer import TrainConfig, TrainData, Trainer

    torch.manual_seed(0)
    fc = flux_config("tiny")
    dit = AudioStoryDiT(fc).eval()
    data = TrainData([torch.randn(SIZES["tiny"].n_semantic, TOKEN_DIM)], [torch.randn(fc.audio_seq_len, 64)], [5.0])
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(dit, data, TrainConfig(steps=1, rank=8, alpha=8.0, **SETTINGS[name]), Path(out))
        tr.run()
        tr.cfg.steps = 1 + steps
        t0 = time.perf_counter()
        tr.run(resume=False)
        dt = time.perf_counter() - t0
    return {"setting": name, "steps_per_s": steps / dt, "peak_rss_mib": peak_rss_bytes() / 2 ** 20}


def real_size_on_paper(ranks=(8, 32)) -> list[dict]:
    """Exact parameter counts of the real DiT and its LoRA (built on the meta device) and the memory they need."""
    from audiostory_core.training.trainer import TrainConfig, add_lora

    rows = []
    for r in ranks:
        with torch.device("meta"):
            dit = AudioStoryDiT(flux_config("real"))
        base = sum(p.numel() for p in dit.parameters())
        lora = sum(p.numel() for p in add_lora(dit, TrainConfig(rank=r, alpha=float(r))))
        rows.append({"rank": r, "dit_params": base, "lora_params": lora,
                     "base_fp32_gib": base * 4 / 2 ** 30, "base_bf16_gib": base * 2 / 2 ** 30,
                     "lora_weights+grads_mib": lora * 8 / 2 ** 20, "adamw_state_mib": lora * 8 / 2 ** 20})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_setting(a.one, a.steps)))
        return
    print(f"tiny DiT LoRA training on CPU ({torch.get_num_threads()} threads), batch 1, rank 8, "
          f"{SIZES['tiny'].audio_seq_len} latent frames, {a.steps} timed steps")
    print(f"| setting | steps/s | peak RSS MiB |\n|---|---|---|")
    for name in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {r['setting']} | {r['steps_per_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    print("\nreal size, DiT LoRA mode, on paper (parameters counted on the meta device; activations excluded)")
    print("| LoRA rank | DiT params | LoRA params | frozen DiT fp32 GiB | frozen DiT bf16 GiB | "
          "LoRA weights+grads MiB | AdamW state MiB |\n|---|---|---|---|---|---|---|")
    for r in real_size_on_paper():
        print(f"| {r['rank']} | {r['dit_params']:,} | {r['lora_params']:,} | {r['base_fp32_gib']:.2f} | "
              f"{r['base_bf16_gib']:.2f} | {r['lora_weights+grads_mib']:.1f} | {r['adamw_state_mib']:.1f} |")


if __name__ == "__main__":
    main()
