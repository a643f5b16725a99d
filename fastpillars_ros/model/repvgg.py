"""RepVGG block (training form: 3x3+BN, 1x1+BN, identity BN) and its fusion into one 3x3 conv.

Also holds the generic Conv/ConvTranspose + BatchNorm folding used by the neck and the head.
Fusion is computed in float64 and cast back, so fused and unfused networks agree to ~1e-6 relative.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

LEAKY_SLOPE = 0.01


def conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int, eps: float) -> nn.Sequential:
    """Conv (no bias) + BatchNorm as a Sequential with children ``conv`` and ``bn`` (official key names)."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)),
        ("bn", nn.BatchNorm2d(cout, eps=eps, momentum=0.01)),
    ]))


def _bn_scale_shift(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as ``y = x * scale + shift`` (float64)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


class RepVGGBlock(nn.Module):
    """RepVGG block: ``LeakyReLU(BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x)])``.

    Input/output ``[B, Cin, H, W] -> [B, Cout, ceil(H/s), ceil(W/s)]`` float32. The identity branch
    exists only when ``Cin == Cout`` and ``stride == 1``. After :meth:`fuse` the block holds a single
    3x3 conv with bias named ``rbr_reparam`` (the official deploy-form key).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, eps: float = 1e-3) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = cin, cout, stride
        self.rbr_identity: nn.BatchNorm2d | None = (
            nn.BatchNorm2d(cin, eps=eps, momentum=0.01) if cin == cout and stride == 1 else None)
        self.rbr_dense: nn.Sequential | None = conv_bn(cin, cout, 3, stride, 1, eps)
        self.rbr_1x1: nn.Sequential | None = conv_bn(cin, cout, 1, stride, 0, eps)
        self.rbr_reparam: nn.Conv2d | None = None
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    @property
    def fused(self) -> bool:
        return self.rbr_reparam is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        assert self.rbr_dense is not None and self.rbr_1x1 is not None
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The single 3x3 kernel ``[Cout, Cin, 3, 3]`` and bias ``[Cout]`` (float64) equal to the branches."""
        assert self.rbr_dense is not None and self.rbr_1x1 is not None
        s3, b3 = _bn_scale_shift(self.rbr_dense.bn)
        s1, b1 = _bn_scale_shift(self.rbr_1x1.bn)
        kernel = self.rbr_dense.conv.weight.double() * s3.view(-1, 1, 1, 1)
        # The 1x1 kernel sits on the centre tap of the 3x3 (same output grid for padding 1 vs 0).
        kernel = kernel + F.pad(self.rbr_1x1.conv.weight.double() * s1.view(-1, 1, 1, 1), [1, 1, 1, 1])
        bias = b3 + b1
        if self.rbr_identity is not None:
            si, bi = _bn_scale_shift(self.rbr_identity)
            ident = torch.zeros_like(kernel)
            idx = torch.arange(self.in_channels)
            ident[idx, idx, 1, 1] = si
            kernel = kernel + ident
            bias = bias + bi
        return kernel, bias

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace the branches by one 3x3 conv with bias, in place (no-op when already fused)."""
        if self.fused:
            return
        assert self.rbr_dense is not None
        ref = self.rbr_dense.conv.weight
        kernel, bias = self.equivalent_kernel_bias()
        # skip_init: no random initialisation of weights that are overwritten right away.
        conv = skip_init(nn.Conv2d, self.in_channels, self.out_channels, 3, stride=self.stride, padding=1,
                         bias=True, device=ref.device)
        conv.weight.copy_(kernel.to(ref.dtype))
        conv.bias.copy_(bias.to(ref.dtype))  # type: ignore[union-attr]
        self.rbr_reparam = conv
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class RepDense2DBasicBlock(nn.Module):
    """Two RepVGG blocks in sequence (``conv1``, ``conv2``), stride 1, no outer residual."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.conv1 = RepVGGBlock(channels, channels, 1, eps)
        self.conv2 = RepVGGBlock(channels, channels, 1, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Return a conv with bias equal to ``bn(conv(x))`` in eval mode (a new module; inputs untouched)."""
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight.double()
    if isinstance(conv, nn.ConvTranspose2d):
        # ConvTranspose weight is [Cin, Cout/groups, kH, kW]: the output channel is dim 1.
        assert conv.groups == 1
        new: nn.Module = skip_init(
            nn.ConvTranspose2d, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding, output_padding=conv.output_padding,  # type: ignore[arg-type]
            dilation=conv.dilation, bias=True, device=conv.weight.device)  # type: ignore[arg-type]
        w = w * scale.view(1, -1, 1, 1)
    else:
        new = skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                        stride=conv.stride, padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
                        groups=conv.groups, bias=True, device=conv.weight.device)
        w = w * scale.view(-1, 1, 1, 1)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    new.weight.copy_(w.to(conv.weight.dtype))
    new.bias.copy_((b * scale + shift).to(conv.weight.dtype))  # type: ignore[union-attr]
    return new


def fuse_sequential_conv_bn(seq: nn.Sequential) -> None:
    """In a Sequential, fold every BatchNorm2d into the conv right before it; the BN slot becomes Identity.

    Keeping the slot (instead of removing it) keeps the Sequential indices, hence the state_dict keys of
    the conv layers, unchanged: ``block_5.1.weight`` stays ``block_5.1.weight`` (plus ``.bias``).
    """
    mods = list(seq.children())
    for i in range(1, len(mods)):
        if isinstance(mods[i], nn.BatchNorm2d) and isinstance(mods[i - 1], (nn.Conv2d, nn.ConvTranspose2d)):
            seq[i - 1] = fold_bn_into_conv(mods[i - 1], mods[i])  # type: ignore[arg-type]
            seq[i] = nn.Identity()
