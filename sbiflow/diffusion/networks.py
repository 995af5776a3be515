"""Noise-prediction networks for unconditional score priors: a small U-Net for maps.

Vectors use the residual MLP of the score estimator (``sbiflow.estimators.score.ScoreNet``)
with an empty condition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["UNet", "time_embedding"]


def time_embedding(t: Tensor, freqs: Tensor) -> Tensor:
    """Sinusoidal features of times ``t`` (scalar or ``(N,)``) → ``(N or 1, 2 F)``."""
    angles = t.reshape(-1, 1).to(freqs.dtype) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _groups(channels: int) -> int:
    return max(1, min(8, channels // 4))


class _ResBlock(nn.Module):
    """Two 3×3 convolutions with group norm, SiLU and an additive time term; a residual path."""

    def __init__(self, cin: int, cout: int, time_dim: int, padding_mode: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(_groups(cin), cin), nn.GroupNorm(_groups(cout), cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, padding_mode=padding_mode)
        self.time = nn.Linear(time_dim, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:  # x (N, C, H, W), temb (N or 1, T)
        h = self.conv1(F.silu(self.norm1(x))) + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """A small U-Net predicting the noise of ``(N, H, W)`` maps at time ``t``.

    Each level halves the resolution (average pooling) and has one residual block on the
    way down and one on the way up (with the skip connection); H and W must be divisible by
    ``2 ** (len(channels) - 1)``. The output layer starts at zero, so an untrained network
    leaves the prior's Gaussian baseline as it is.

    Args:
        channels: Channels per level, e.g. ``(32, 64)``.
        time_features: Size of the sinusoidal time embedding (even).
        periodic: Circular padding (for fields on a torus, e.g. periodic simulation boxes).

    Example:
        >>> net = UNet((8, 16))
        >>> net(torch.zeros(3, 16, 16), torch.tensor(0.5)).shape
        torch.Size([3, 16, 16])
    """

    def __init__(
        self, channels: tuple[int, ...] = (32, 64), time_features: int = 32, periodic: bool = False
    ) -> None:
        super().__init__()
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}.")
        self.channels = tuple(int(c) for c in channels)
        mode = "circular" if periodic else "zeros"
        self.register_buffer(
            "freqs", torch.logspace(0.0, 2.0, time_features // 2), persistent=False
        )
        tdim = 4 * self.channels[0]
        self.time_mlp = nn.Sequential(
            nn.Linear(time_features, tdim), nn.SiLU(), nn.Linear(tdim, tdim)
        )
        self.inp = nn.Conv2d(1, self.channels[0], 3, padding=1, padding_mode=mode)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for i, c in enumerate(self.channels):
            cin = self.channels[max(0, i - 1)]
            self.down.append(_ResBlock(cin, c, tdim, mode))
        self.mid = _ResBlock(self.channels[-1], self.channels[-1], tdim, mode)
        for i in reversed(range(len(self.channels))):
            cin = self.channels[-1] if i == len(self.channels) - 1 else self.channels[i + 1]
            self.up.append(_ResBlock(cin + self.channels[i], self.channels[i], tdim, mode))
        self.out = nn.Conv2d(self.channels[0], 1, 3, padding=1, padding_mode=mode)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Noise prediction for maps ``x`` ``(N, H, W)`` at times ``t`` (scalar or ``(N,)``)."""
        levels = len(self.channels) - 1
        if x.shape[-1] % 2**levels or x.shape[-2] % 2**levels:
            raise ValueError(
                f"Map sides {tuple(x.shape[-2:])} must be divisible by {2**levels} for a "
                f"U-Net of {levels + 1} levels; pad the maps or use fewer channels levels."
            )
        temb = self.time_mlp(time_embedding(t, self.freqs).to(x.dtype))
        h = self.inp(x.unsqueeze(1))
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, temb)
            skips.append(h)
        h = self.mid(h, temb)
        for i, block in enumerate(self.up):
            skip = skips[-1 - i]
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)
        return self.out(F.silu(h)).squeeze(1)
