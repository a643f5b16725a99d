"""CRVNet backbone (official ``RepMiddlePillarEncoder2X34_6631``): MAPE + four RepVGG stages.

The backbone owns the pillar encoder as ``pillar_pooling1`` so that all MAPE weights live under
``backbone.`` like in the official checkpoint. Stage i (i = 2..5 in official naming) is
``conv{i}_first_block`` (one RepVGG block, possibly strided) followed by ``conv{i}`` (a Sequential of
RepDense2DBasicBlocks).
"""

from __future__ import annotations

from torch import Tensor, nn

from .mape import MAPE
from .repvgg import RepDense2DBasicBlock, RepVGGBlock

STAGE_NAMES = ("conv2", "conv3", "conv4", "conv5")


class CRVNet(nn.Module):
    """Dense RepVGG backbone over the pillar canvas.

    Input ``[B, C_enc, H, W]``; returns the stage-3 and stage-4 maps (official ``x_conv4``, ``x_conv5``)
    that the neck consumes: ``[B, widths[2], H/s3, W/s3]`` and ``[B, widths[3], H/s4, W/s4]`` where
    s3/s4 are the cumulative strides.
    """

    def __init__(self, in_features: int, encoder_filters: int, widths: tuple[int, ...],
                 num_blocks: tuple[int, ...], strides: tuple[int, ...], encoder_eps: float = 1e-3,
                 eps: float = 1e-3) -> None:
        super().__init__()
        self.pillar_pooling1 = MAPE(in_features, encoder_filters, encoder_eps)
        cin = encoder_filters
        for name, width, depth, stride in zip(STAGE_NAMES, widths, num_blocks, strides, strict=True):
            self.add_module(f"{name}_first_block", nn.Sequential(RepVGGBlock(cin, width, stride, eps)))
            self.add_module(name, nn.Sequential(*[RepDense2DBasicBlock(width, eps) for _ in range(depth)]))
            cin = width

    def forward(self, canvas: Tensor) -> tuple[Tensor, Tensor]:
        x = canvas
        outs = []
        for name in STAGE_NAMES:
            x = getattr(self, f"{name}_first_block")(x)
            x = getattr(self, name)(x)
            outs.append(x)
        return outs[2], outs[3]

    def repvgg_blocks(self) -> list[RepVGGBlock]:
        return [m for m in self.modules() if isinstance(m, RepVGGBlock)]
