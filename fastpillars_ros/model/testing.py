"""Helpers for tests and benchmarks: randomised weights/BN statistics and synthetic pillar inputs.

Random BN statistics matter: with fresh BN (mean 0, var 1, gamma 1, beta 0) fusion bugs in the
shift/scale terms cancel out and go unnoticed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, weight_scale: float = 1.0) -> nn.Module:
    """Give every BatchNorm random running mean/var and affine parameters, and every conv/linear bias
    a random value (weights keep their default init, scaled by ``weight_scale``). In place; returns model."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t: Tensor, lo: float, hi: float) -> Tensor:
        return (torch.rand(t.shape, generator=g) * (hi - lo) + lo).to(t)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(rnd(m.running_mean, -0.2, 0.2))  # type: ignore[arg-type]
            m.running_var.copy_(rnd(m.running_var, 0.5, 2.0))  # type: ignore[arg-type]
            m.weight.copy_(rnd(m.weight, 0.5, 1.5))
            m.bias.copy_(rnd(m.bias, -0.2, 0.2))
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.mul_(weight_scale)
            if m.bias is not None:
                m.bias.copy_(rnd(m.bias, -0.1, 0.1))
    return model


def random_pillars(num_pillars: int, num_points: int, num_features: int, height: int, width: int,
                   seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random decorated points ``[L, F]``, pillar ids ``[L]`` (every pillar gets >= 1 point) and
    distinct pillar cells ``[M, 2]`` ``[row, col]`` on an ``height x width`` canvas."""
    assert num_points >= num_pillars
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(height * width, generator=g)[:num_pillars]
    coords = torch.stack([cells // width, cells % width], dim=1)
    ids = torch.cat([torch.arange(num_pillars), torch.randint(0, num_pillars, (num_points - num_pillars,),
                                                              generator=g)])
    ids = ids[torch.randperm(num_points, generator=g)]
    features = torch.randn(num_points, num_features, generator=g) * 2.0
    return features, ids, coords
