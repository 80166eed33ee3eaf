"""The rectified-flow objective that :mod:`audiostory_core.stages.sampling` inverts (TangoFlux ``model.py``).

Convention (the sampler's): ``x_σ = (1 - σ) x0 + σ ε`` and the DiT predicts the velocity ``ε - x0``, so the Euler
step ``x ← x + (σ_next - σ) v`` walks from noise (σ = 1) to data (σ = 0). Training σ follows TangoFlux:
``u ~ logit-normal(0, 1)``, ``σ = timesteps[int(u·1000)] / 1000`` on the descending table ``1000 … 1``.
"""
from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000   # FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000), shift 1


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(1 - σ) x0 + σ ε`` with one σ per sample."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the DiT is trained to predict: ``ε - x0``."""
    return noise - x0


def sample_sigmas(n: int, generator: torch.Generator) -> torch.Tensor:
    """TangoFlux's training σ: logit-normal u, looked up in the descending 1000-step table (σ in (0, 1])."""
    u = torch.sigmoid(torch.randn(n, generator=generator))
    idx = (u * NUM_TRAIN_TIMESTEPS).long().clamp(max=NUM_TRAIN_TIMESTEPS - 1)
    return (NUM_TRAIN_TIMESTEPS - idx).float() / NUM_TRAIN_TIMESTEPS


def flow_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, averaged over the batch (TangoFlux ``model.py:468-474``)."""
    per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return per_sample.mean()
