"""RPNV2 neck: two-level fusion of backbone stages 3 and 4 (official ``necks/rpn.py``).

Sequential indices (hence state_dict keys) follow the official layout: slot 0 of ``block_*`` and
``deblock_4`` is a ZeroPad2d, then [conv, BN, act] triplets; ``deblock_5`` is [ConvTranspose, BN, act].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .repvgg import LEAKY_SLOPE, fuse_sequential_conv_bn


def _conv_stack(cin: int, cout: int, num_layers: int, eps: float) -> nn.Sequential:
    """ZeroPad(1) + Conv3x3 cin->cout + BN + act, then ``num_layers`` x [Conv3x3 (pad 1) + BN + act]."""
    layers: list[nn.Module] = [
        nn.ZeroPad2d(1), nn.Conv2d(cin, cout, 3, bias=False),
        nn.BatchNorm2d(cout, eps=eps, momentum=0.01), nn.LeakyReLU(LEAKY_SLOPE),
    ]
    for _ in range(num_layers):
        layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout, eps=eps, momentum=0.01), nn.LeakyReLU(LEAKY_SLOPE)]
    return nn.Sequential(*layers)


def _absorb_zero_pad(seq: nn.Sequential) -> None:
    """Turn ``ZeroPad2d(1)`` + unpadded conv into one conv with ``padding=1`` (identical result, a plain
    ONNX Conv instead of a Pad subgraph). The pad slot becomes Identity so indices/keys do not move."""
    if isinstance(seq[0], nn.ZeroPad2d) and isinstance(seq[1], nn.Conv2d) and seq[1].padding == (0, 0):
        if tuple(seq[0].padding) == (1, 1, 1, 1):
            seq[1].padding = (1, 1)
            seq[0] = nn.Identity()


class RPNV2(nn.Module):
    """Neck. Inputs ``x4`` ``[B, c4, H, W]`` and ``x5`` ``[B, c5, H/2, W/2]``; output ``[B, ds[1], H, W]``.

    ``block_5`` runs on x5, ``deblock_5`` upsamples it x2, ``deblock_4`` maps x4 (no resampling);
    the two are concatenated as [deblock_4, deblock_5] and refined by ``block_4``.
    """

    def __init__(self, c4: int, c5: int, layer_nums: tuple[int, ...] = (5, 5),
                 ds_num_filters: tuple[int, ...] = (256, 256), us_num_filters: tuple[int, ...] = (128, 128),
                 up_stride: int = 2, eps: float = 1e-3) -> None:
        super().__init__()
        self.block_5 = _conv_stack(c5, ds_num_filters[0], layer_nums[0], eps)
        self.deblock_5 = nn.Sequential(
            nn.ConvTranspose2d(ds_num_filters[0], us_num_filters[1], up_stride, stride=up_stride, bias=False),
            nn.BatchNorm2d(us_num_filters[1], eps=eps, momentum=0.01), nn.LeakyReLU(LEAKY_SLOPE))
        self.deblock_4 = nn.Sequential(
            nn.ZeroPad2d(1), nn.Conv2d(c4, us_num_filters[0], 3, bias=False),
            nn.BatchNorm2d(us_num_filters[0], eps=eps, momentum=0.01), nn.LeakyReLU(LEAKY_SLOPE))
        self.block_4 = _conv_stack(us_num_filters[0] + us_num_filters[1], ds_num_filters[1], layer_nums[1], eps)
        self.out_channels = ds_num_filters[1]

    def forward(self, x4: Tensor, x5: Tensor) -> Tensor:
        up5 = self.deblock_5(self.block_5(x5))
        x = torch.cat([self.deblock_4(x4), up5], dim=1)
        return self.block_4(x)

    def fuse(self) -> None:
        """Fold every BN into the conv before it (keys of the conv layers stay the same, plus ``.bias``)."""
        for seq in (self.block_5, self.deblock_5, self.deblock_4, self.block_4):
            fuse_sequential_conv_bn(seq)
            _absorb_zero_pad(seq)
