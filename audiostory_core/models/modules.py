"""The trainable modules around the LLM: bridge heads, fusion attention and the audio DiT.

Module layouts follow the official classes so that the weights map one to one:
``projector``/``audio_projector`` are ``mlp2x_gelu`` heads, the fusion is a sequence-first
``nn.MultiheadAttention(1024, 8)``, and the DiT is ``diffusers.FluxTransformer2DModel`` plus
TangoFlux's pooled ``fc`` and duration embedder.
"""
from __future__ import annotations

from math import pi

import torch
from torch import nn

from .config import FluxConfig

TOKEN_DIM = 1024  # flan-t5-large d_model: the space the semantic tokens live in


def mlp2x_gelu(in_dim: int, out_dim: int = TOKEN_DIM) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class BridgeHeads(nn.Module):
    """Projects query hidden states into T5 space and fuses semantic with residual tokens."""

    def __init__(self, llm_dim: int, t5_feature_scale: float = 10.0, dim: int = TOKEN_DIM, heads: int = 8):
        super().__init__()
        self.projector = mlp2x_gelu(llm_dim, dim)
        self.audio_projector = mlp2x_gelu(llm_dim, dim)
        self.multihead_attention = nn.MultiheadAttention(embed_dim=dim, num_heads=heads)
        self.t5_feature_scale = t5_feature_scale

    def project(self, semantic_states: torch.Tensor, residual_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[E,N,H], [E,M,H] hidden states -> [E,N,1024], [E,M,1024] tokens."""
        return self.projector(semantic_states), self.audio_projector(residual_states)

    def fuse(self, semantic: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``(sem + MHA(q=sem, k=res, v=res)) / t5_feature_scale`` as in evaluate/inference.py.

        The attention is sequence-first, so the event axis is the batch axis.
        """
        q = semantic.permute(1, 0, 2)
        kv = residual.permute(1, 0, 2)
        attn = self.multihead_attention(q, kv, kv)[0].permute(1, 0, 2)
        return (semantic + attn) / self.t5_feature_scale


class StableAudioPositionalEmbedding(nn.Module):
    """Learned random-Fourier features of a scalar in [0, 1] (from Stable Audio Open)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        times = times[..., None]
        freqs = times * self.weights[None] * 2 * pi
        fouriered = torch.cat((freqs.sin(), freqs.cos()), dim=-1)
        return torch.cat((times, fouriered), dim=-1)


class DurationEmbedder(nn.Module):
    """Seconds -> one 1024-d context token (clamped to [0, max_duration])."""

    def __init__(self, dim: int, min_value: float, max_value: float, internal_dim: int = 256):
        super().__init__()
        self.time_positional_embedding = nn.Sequential(
            StableAudioPositionalEmbedding(internal_dim), nn.Linear(internal_dim + 1, dim))
        self.dim, self.min_value, self.max_value = dim, min_value, max_value

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        x = seconds.clamp(self.min_value, self.max_value)
        x = (x - self.min_value) / (self.max_value - self.min_value)
        x = x.to(next(self.time_positional_embedding.parameters()).dtype)
        return self.time_positional_embedding(x).view(-1, 1, self.dim)


class AudioStoryDiT(nn.Module):
    """TangoFlux-style flow DiT conditioned on LLM tokens, a duration token and their pooled mean.

    ``forward`` predicts the flow velocity (noise - x0) for latents ``[B, T, 64]`` at noise level
    ``sigma`` in [0, 1].
    """

    def __init__(self, cfg: FluxConfig):
        super().__init__()
        from diffusers import FluxTransformer2DModel

        self.config = cfg
        self.transformer = FluxTransformer2DModel(
            in_channels=cfg.in_channels, num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
            attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
            joint_attention_dim=cfg.joint_attention_dim, pooled_projection_dim=TOKEN_DIM, guidance_embeds=False)
        self.fc = nn.Sequential(nn.Linear(TOKEN_DIM, cfg.joint_attention_dim), nn.ReLU())
        self.duration_embedder = DurationEmbedder(TOKEN_DIM, min_value=0, max_value=cfg.max_duration)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fc[0].weight.device

    def condition(self, tokens: torch.Tensor, seconds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ``[tokens ; duration token]`` and pooled vector ``fc(nanmean(tokens))``."""
        tokens = tokens.to(self.device, self.dtype)
        pooled = self.fc(torch.nanmean(tokens, dim=1))
        dur = self.duration_embedder(seconds.to(self.device, torch.float32))
        return torch.cat([tokens, dur.to(tokens.dtype)], dim=1), pooled

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        b, t, _ = latents.shape
        dev = self.device
        txt_ids = torch.zeros(context.shape[1], 3, device=dev)
        img_ids = torch.arange(t, device=dev, dtype=torch.float32)[:, None].repeat(1, 3)
        sigma = sigma.to(dev).reshape(-1)
        return self.transformer(
            hidden_states=latents.to(dev, self.dtype), timestep=sigma, guidance=None,
            pooled_projections=pooled, encoder_hidden_states=context,
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
