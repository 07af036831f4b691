"""Channel-positional attention module (CPAM, paper eq. 3-5).

Channel attention follows DANet's CAM: A = softmax(X Xᵀ) over channels, F'_c = β A X + X.
Positional attention follows DANet's PAM: Q, K = 1x1 convs to C/8 channels, V = 1x1 conv,
A = softmax(Qᵀ K) over positions, F'_p = γ V Aᵀ + X. β and γ start at 0.
Fusion is eq. 5 as written: F_CPAM = X ⊙ F'_c ⊙ F'_p (the paper's "input feature vector V" is the
module input). At initialisation (β = γ = 0) this is X ⊙ X ⊙ X, not the identity.

Memory: PAM's attention is (HW)² per image. CPAM sits at the *input* of each decoder block, i.e.
on the bottleneck output and the upsampled maps at 1/32, 1/16 and 1/8 of the image (8², 16², 32²
positions at 256 px); it never runs at layer1's 64x64 grid. As a guard for larger images, when
HW exceeds `max_positions` the keys and values are computed on an average-pooled grid of at most
`max_positions` cells while queries stay at full resolution: the attention becomes
(HW x max_positions) and the output keeps the full resolution. At 256 px with the default 1024
nothing is pooled (the attention is exact).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        energy = torch.bmm(flat, flat.transpose(1, 2))  # (N, C, C)
        attention = torch.softmax(energy.float(), dim=-1).to(flat.dtype)
        out = torch.bmm(attention, flat).reshape(n, c, h, w)
        return self.beta * out + x


def pooled_grid(h: int, w: int, max_positions: int) -> tuple[int, int]:
    """Largest grid with the input's aspect ratio and at most max_positions cells."""
    if h * w <= max_positions:
        return h, w
    scale = math.sqrt(max_positions / (h * w))
    return max(1, int(h * scale)), max(1, int(w * scale))


class PositionAttention(nn.Module):
    def __init__(self, channels: int, max_positions: int = 1024):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grid = pooled_grid(h, w, self.max_positions)
        context = x if grid == (h, w) else F.adaptive_avg_pool2d(x, grid)
        q = self.query(x).flatten(2)  # (N, C', HW)
        k = self.key(context).flatten(2)  # (N, C', hw)
        v = self.value(context).flatten(2)  # (N, C, hw)
        energy = torch.bmm(q.transpose(1, 2), k)  # (N, HW, hw)
        attention = torch.softmax(energy.float(), dim=-1).to(v.dtype)
        out = torch.bmm(v, attention.transpose(1, 2)).reshape(n, c, h, w)
        return self.gamma * out + x


class CPAM(nn.Module):
    def __init__(self, channels: int, max_positions: int = 1024):
        super().__init__()
        self.channel = ChannelAttention()
        self.position = PositionAttention(channels, max_positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel(x) * self.position(x)
