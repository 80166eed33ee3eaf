"""One LoRA training run from saved data, for ``torchrun`` (tests/test_training.py and test_training_e2e.py
start it).

Usage: torchrun --nproc_per_node 2 tests/training_run.py MODEL_ROOT DATA.pt OUT BATCH_SIZE STEPS

DATA.pt holds ``latents``, ``seconds``, ``lr``, ``seed`` and either ``tokens`` (DiT mode) or, for e2e mode,
``mode`` = "e2e", the one-event plans as ``instructions``/``captions`` (strings: weights_only can read them)
and the remaining TrainConfig settings under ``config``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from audiostory_core.models.config import locate
from audiostory_core.models.loading import load_models
from audiostory_core.stages.plan import StoryEvent, StoryPlan
from audiostory_core.training.datasets import TrainExample
from audiostory_core.training.trainer import TrainConfig, TrainData, Trainer, e2e_data


def main(root: str, data: str, out: str, batch_size: str, steps: str) -> None:
    saved = torch.load(data, weights_only=True)
    e2e = saved.get("mode") == "e2e"
    models = load_models(locate(root), torch.float32, "cpu", planner=e2e, vae=False)
    cfg = TrainConfig(steps=int(steps), batch_size=int(batch_size), lr=float(saved["lr"]), rank=4, alpha=4.0,
                      seed=int(saved["seed"]), **dict(saved.get("config", {})))
    seconds = saved["seconds"].tolist()
    if e2e:
        exs = [TrainExample(StoryPlan(ins, "", [StoryEvent(cap, s)]), 0, torch.zeros(2, 1), cap)
               for ins, cap, s in zip(saved["instructions"], saved["captions"], seconds)]
        Trainer(models.dit, e2e_data(exs, list(saved["latents"])), cfg, Path(out), planner=models.planner).run()
    else:
        Trainer(models.dit, TrainData(list(saved["tokens"]), list(saved["latents"]), seconds), cfg, Path(out)).run()


if __name__ == "__main__":
    main(*sys.argv[1:6])
