"""Building blocks shared by the VAE and the diffusion UNet."""

from __future__ import annotations

import math

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block; an optional embedding adds a per-channel scale and shift
    (FiLM, as in Dhariwal & Nichol 2021's adaptive group norm)."""

    def __init__(self, channels_in: int, channels_out: int, embedding_dim: int = 0):
        super().__init__()
        self.norm1 = group_norm(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.film = nn.Linear(embedding_dim, 2 * channels_out) if embedding_dim else None
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(nn.functional.silu(embedding))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.conv2(nn.functional.silu(h))


class SelfAttention(nn.Module):
    """Single-head self-attention over the spatial positions of a small feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)
        # (B, HW, C) x (B, C, HW) -> (B, HW, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(channels), dim=-1)
        attended = (v @ weights.transpose(1, 2)).reshape(batch, channels, height, width)
        return x + self.out(attended)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of a continuous t in [0, 1] (Vaswani et al. 2017, scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]  # (N, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
