"""One DiT LoRA training run from saved TrainData, for ``torchrun`` (tests/test_training.py starts it).

Usage: torchrun --nproc_per_node 2 tests/training_run.py MODEL_ROOT DATA.pt OUT BATCH_SIZE STEPS
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from audiostory_core.models.config import locate
from audiostory_core.models.loading import load_models
from audiostory_core.training.trainer import TrainConfig, TrainData, Trainer


def main(root: str, data: str, out: str, batch_size: str, steps: str) -> None:
    saved = torch.load(data, weights_only=True)
    dit = load_models(locate(root), torch.float32, "cpu", planner=False, vae=False).dit
    cfg = TrainConfig(steps=int(steps), batch_size=int(batch_size), lr=float(saved["lr"]), rank=4, alpha=4.0,
                      seed=int(saved["seed"]))
    Trainer(dit, TrainData(list(saved["tokens"]), list(saved["latents"]), saved["seconds"].tolist()), cfg,
            Path(out)).run()


if __name__ == "__main__":
    main(*sys.argv[1:6])
