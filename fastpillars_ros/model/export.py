"""ONNX export of the dense part (canvas -> head maps) and an onnxruntime parity check.

The exported graph is the fully fused network (plain convs with bias, LeakyReLU/ReLU, one
ConvTranspose, one Concat) with a static input ``canvas`` of shape ``[1, C, H, W]`` and outputs
``task{t}_{head}`` in task order, then head order (reg, height, dim, rot, vel, iou, hm).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .fastpillars import FastPillars


def output_names(config: ModelConfig) -> list[str]:
    """ONNX output names in order, e.g. ``["task0_reg", "task0_height", ..., "task0_hm", "task1_reg", ...]``."""
    heads = [name for name, _ in config.heads] + ["hm"]
    return [f"task{t}_{h}" for t in range(len(config.tasks)) for h in heads]


def task_outputs(config: ModelConfig, outputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """Outputs keyed by :func:`output_names` -> the per-task head dicts of :meth:`FastPillars.forward_dense`."""
    heads = [name for name, _ in config.heads] + ["hm"]
    return [{h: outputs[f"task{t}_{h}"] for h in heads} for t in range(len(config.tasks))]


class _DenseGraph(nn.Module):
    """Flat-tuple wrapper of :meth:`FastPillars.forward_dense` for tracing."""

    def __init__(self, model: FastPillars) -> None:
        super().__init__()
        self.model = model

    def forward(self, canvas: Tensor) -> tuple[Tensor, ...]:
        outs = self.model.forward_dense(canvas)
        return tuple(t for task in outs for t in task.values())


def _fused_copy(model: FastPillars) -> FastPillars:
    m = copy.deepcopy(model).cpu().float().eval()
    return m.fuse("full") if m.fusion_level != "full" else m


def export_onnx(model: FastPillars, path: str | Path, opset: int = 17,
                canvas_hw: tuple[int, int] | None = None) -> Path:
    """Export the fused dense part to ONNX (the caller's model is not modified).

    Input ``canvas`` float32 ``[1, *config.canvas_shape]`` (static); outputs named by :func:`output_names`.
    ``canvas_hw`` overrides the static (H, W), e.g. for quick tests of the large configs (the dense part
    is fully convolutional; H and W must be multiples of the total backbone stride).
    """
    path = Path(path)
    fused = _fused_copy(model)
    c, h, w = model.config.canvas_shape
    if canvas_hw is not None:
        h, w = canvas_hw
    dummy = torch.zeros(1, c, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(_DenseGraph(fused), (dummy,), str(path), input_names=["canvas"],
                          output_names=output_names(model.config), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return path


@torch.no_grad()
def check_onnx(model: FastPillars, path: str | Path, canvas: Tensor | None = None, atol: float = 1e-4,
               seed: int = 0) -> float:
    """Run the ONNX file with onnxruntime (CPU) and compare with torch; return the max abs difference.

    ``canvas`` defaults to a random non-negative sparse canvas (like real MAPE output) of the ONNX
    input's static shape.
    Raises:
        ValueError: an output is missing or differs by more than ``atol``.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, c, h, w = sess.get_inputs()[0].shape
    if canvas is None:
        g = torch.Generator().manual_seed(seed)
        canvas = torch.rand(1, c, h, w, generator=g) * (torch.rand(1, 1, h, w, generator=g) < 0.2)
    ref_model = model.eval()
    ref = [t for task in ref_model.forward_dense(canvas.to(next(model.parameters()).device))
           for t in task.values()]
    names = output_names(model.config)
    got = sess.run(names, {"canvas": canvas.cpu().numpy().astype(np.float32)})
    worst = 0.0
    for name, r, o in zip(names, ref, got, strict=True):
        diff = float(np.abs(r.cpu().numpy() - o).max()) if o.size else 0.0
        worst = max(worst, diff)
        if diff > atol:
            raise ValueError(f"onnxruntime output {name} differs from torch by {diff:.3g} > {atol:g}")
    return worst
