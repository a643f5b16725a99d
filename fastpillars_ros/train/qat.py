"""Quantisation-aware fine-tuning: train the dense part through the INT8 weight grid it is deployed on.

Why: on processors without AMX the CPU default runs the dense part in INT8 (``runtime/quantize.py``), and its
boxes then differ from fp32's by more than issue #17 allows on some sets. The error is spread over the network, so
no layer can simply be kept in fp32; here the network learns weights that survive the rounding. Measured (MODEL_CARD
step 5 item 26): on the default's weights this does not remove INT8's loss, which lies in the 8-bit activations
(16-bit activations with these int8 weights give fp32's APs within 1.1); the option stays for other fine-tunes.

What the forward pass sees (:func:`prepare`), every convolution the INT8 graph quantises, exactly as
:func:`~fastpillars_ros.runtime.quantize.quantize_dense` rounds it:

* a RepVGG block: the single 3x3 kernel of its fused branches (:meth:`RepVGGBlock.equivalent_kernel_bias`);
  for square stride-1 blocks without the centre taps of its diagonal, which the identity split computes in
  float as ``d * x`` (:func:`~fastpillars_ros.runtime.quantize.split_identity`);
* the neck's and the head's convolutions and transposed convolutions: their own weights; their batch norm
  scales each output channel, and per-channel symmetric rounding commutes with that scale, so rounding the raw
  weight is rounding the folded one;
* rounding: per output channel (axis 0 of a convolution's weight, axis 1 of a transposed one), symmetric, onto
  the 255 levels -127..127 times ``max |w| / 127`` (onnxruntime's symmetric int8 range); the gradient passes it
  unchanged (straight-through estimator);
* the centre diagonal that the identity split takes out: per tensor, asymmetric uint8 (the graph feeds it to its
  Mul like an activation);
* the first block, whose input is the MAPE canvas, stays fp32 as in the INT8 graph.

Batch norm keeps its running statistics (frozen): the INT8 graph folds them into the weights, so the rounded kernel
trained on must be the deployed one. Activations are not rounded. The checkpoint keeps the ordinary training form.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.fastpillars import FastPillars
from ..model.repvgg import RepVGGBlock

#: onnxruntime's symmetric int8 weight range is -127..127 (``ONNX_INT_TYPE_SYMMETRIC_RANGE``).
INT8_LEVELS = 127


def fake_quant_int8(weight: Tensor, axis: int) -> Tensor:
    """``weight`` rounded per channel along ``axis`` onto ``k * max|w| / 127``, k in -127..127, same shape and
    dtype; the gradient with respect to ``weight`` is the identity (straight-through)."""
    dims = [d for d in range(weight.dim()) if d != axis]
    scale = weight.detach().abs().amax(dim=dims, keepdim=True) / INT8_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
    rounded = torch.clamp(torch.round(weight.detach() / scale), -INT8_LEVELS, INT8_LEVELS) * scale
    return weight + (rounded - weight.detach())


def fake_quant_uint8(tensor: Tensor) -> Tensor:
    """``tensor`` rounded as onnxruntime rounds a float constant fed to an activation input (per tensor,
    asymmetric uint8 over its range widened to hold 0); straight-through gradient."""
    lo = torch.clamp(tensor.detach().min(), max=0.0)
    hi = torch.clamp(tensor.detach().max(), min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=torch.finfo(tensor.dtype).tiny)
    zero = torch.round(-lo / scale)
    rounded = (torch.clamp(torch.round(tensor.detach() / scale) + zero, 0, 255) - zero) * scale
    return tensor + (rounded - tensor.detach())


def _splits_identity(block: RepVGGBlock) -> bool:
    """Whether the INT8 graph computes this block's centre diagonal in float (``split_identity``'s rule)."""
    return block.in_channels == block.out_channels and block.stride == 1


def repvgg_weights(block: RepVGGBlock) -> tuple[Tensor, Tensor, Tensor | None]:
    """A training-form block as the INT8 graph holds it: the rounded 3x3 kernel ``[Cout, Cin, 3, 3]``, the bias
    ``[Cout]`` and, where the identity split applies, the rounded centre diagonal ``[1, C, 1, 1]`` (else None);
    float32, differentiable in the block's parameters."""
    kernel, bias = block.equivalent_kernel_bias()
    kernel, bias = kernel.float(), bias.float()
    if not _splits_identity(block):
        return fake_quant_int8(kernel, 0), bias, None
    idx = torch.arange(block.in_channels, device=kernel.device)
    centre = torch.zeros_like(kernel)
    centre[idx, idx, 1, 1] = 1.0
    diagonal = kernel[idx, idx, 1, 1].view(1, -1, 1, 1)
    return fake_quant_int8(kernel * (1.0 - centre), 0), bias, fake_quant_uint8(diagonal)


def _repvgg_forward(block: RepVGGBlock, x: Tensor) -> Tensor:
    kernel, bias, diagonal = repvgg_weights(block)
    out = F.conv2d(x, kernel.to(x.dtype), bias.to(x.dtype), block.stride, 1)
    if diagonal is not None:
        out = out + diagonal.to(x.dtype) * x
    return block.act(out)


def _rounded_blocks(model: FastPillars) -> list[RepVGGBlock]:
    """The RepVGG blocks the INT8 graph quantises: all but the first (in order), which reads the canvas."""
    return model.backbone.repvgg_blocks()[1:]


def _rounded_convs(model: FastPillars) -> list[tuple[str, nn.Conv2d | nn.ConvTranspose2d, int]]:
    """(name, module, output-channel axis of its weight) of the neck's and head's convolutions."""
    return [(name, module, 1 if isinstance(module, nn.ConvTranspose2d) else 0)
            for name, module in model.named_modules()
            if name.startswith(("neck.", "bbox_head.")) and isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]


def rounded_weights(model: FastPillars) -> dict[str, Tensor]:
    """What :func:`prepare` trains through, keyed by the fused model's weight names as the INT8 graph names them
    (``backbone.conv3.0.conv1.rbr_reparam.weight``, ``...rbr_reparam.weight_identity``, ``neck.block_4.1.weight``;
    the neck's and head's weights before their batch norm is folded in, which scales each output channel)."""
    names = {module: name for name, module in model.named_modules()}
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for block in _rounded_blocks(model):
            kernel, _, diagonal = repvgg_weights(block)
            out[f"{names[block]}.rbr_reparam.weight"] = kernel
            if diagonal is not None:
                out[f"{names[block]}.rbr_reparam.weight_identity"] = diagonal
        for name, conv, axis in _rounded_convs(model):
            out[f"{name}.weight"] = fake_quant_int8(conv.weight, axis)
    return out


def _conv_forward(conv: nn.Conv2d, x: Tensor) -> Tensor:
    return conv._conv_forward(x, fake_quant_int8(conv.weight, 0), conv.bias)


def _conv_transpose_forward(conv: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    return F.conv_transpose2d(x, fake_quant_int8(conv.weight, 1), conv.bias, conv.stride, conv.padding,  # type: ignore[arg-type]
                              conv.output_padding, conv.groups, conv.dilation)  # type: ignore[arg-type]


def _frozen_train(bn: nn.modules.batchnorm._BatchNorm, mode: bool = True) -> nn.Module:
    return nn.Module.train(bn, False)


def prepare(model: FastPillars) -> int:
    """Make ``model`` (training form) compute its dense part through the INT8 weight grid and freeze its batch
    norms, in place; returns how many convolutions are rounded. Parameters and state-dict keys are unchanged."""
    if model.fused:
        raise ValueError("quantisation-aware training needs the training form (an unfused model)")
    blocks, convs = _rounded_blocks(model), _rounded_convs(model)
    for block in blocks:
        block.forward = partial(_repvgg_forward, block)  # type: ignore[method-assign]
    for _, conv, _ in convs:
        forward = _conv_transpose_forward if isinstance(conv, nn.ConvTranspose2d) else _conv_forward
        conv.forward = partial(forward, conv)  # type: ignore[method-assign]
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = partial(_frozen_train, module)  # type: ignore[method-assign]
            module.eval()
    return len(blocks) + len(convs)
