"""Scan context: one FiLM step that lets every pillar see a summary of the whole scan.

Lidars differ in how their beams sample the same object (an HDL-64E puts twice the rows of a VLP-32C on a
pedestrian, and the VLP-32C bunches its lasers near the horizon). The convolutions see only a neighbourhood, so
they cannot tell which kind of scan they are in; a network trained on several sensors then has to give the same
few points one meaning for all of them. Here the mean MAPE feature over the scan's occupied pillars (a signature of
the sensor and of the scene) sets a per-channel scale and shift for every occupied pillar.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ScanContext(nn.Module):
    """Canvas ``[B, C, H, W]`` -> canvas of the same shape; empty pillars (all-zero columns) stay zero.

    ``gamma, beta = MLP(mean of the occupied pillars' features)`` (``[B, C]`` each), then every occupied pillar's
    features ``f`` become ``f * (1 + tanh(gamma)) + beta``. The MLP's last layer starts at zero, so a new module is
    the identity and weights trained without it load unchanged.
    """

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, canvas: Tensor) -> Tensor:
        occupied = (canvas.abs().sum(dim=1, keepdim=True) > 0).to(canvas.dtype)   # [B, 1, H, W]
        count = occupied.sum(dim=(2, 3)).clamp_min(1.0)                          # [B, 1]
        mean = canvas.sum(dim=(2, 3)) / count                                   # [B, C]
        gamma, beta = self.fc2(torch.relu(self.fc1(mean))).chunk(2, dim=1)
        scale = (1.0 + torch.tanh(gamma))[:, :, None, None]
        return (canvas * scale + beta[:, :, None, None]) * occupied
