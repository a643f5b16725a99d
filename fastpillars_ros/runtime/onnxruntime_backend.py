"""CPU back end: the fused dense part (canvas -> head maps) run by onnxruntime.

Why: on the 2-core CPU machine onnxruntime's CPU execution provider ran the tiny dense part 1.4x faster than
torch's fused network (BENCHMARKS.md), which keeps the embedded default inside its forward budget. The graph
is exported from the loaded model at construction (about 1 s for tiny) and kept in memory; MAPE, decoding
and NMS stay in torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..model.export import export_onnx, output_names, task_outputs
from ..model.fastpillars import FastPillars


def onnxruntime_version() -> str | None:
    """The installed onnxruntime version, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


class OnnxRuntimeDense:
    """``forward_dense`` of a model through an onnxruntime CPU session.

    Args:
        model: the torch model (any fusion level; the export fuses a copy).
        threads: intra-op threads (default: torch's thread count, so both back ends use the same cores).
    """

    def __init__(self, model: FastPillars, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.config = model.config
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # No spin-waiting after a run: MAPE, decoding and NMS run in torch's thread pool right after, and
        # spinning onnxruntime threads would take the cores from it (measured 1.6x slower end to end on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "dense.onnx")
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = output_names(self.config)
        self.input_shape = (1, *self.config.canvas_shape)

    def forward_dense(self, canvas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``[1, C, H, W]`` float32 canvas (CPU) -> per-task head maps as CPU float32 tensors."""
        if tuple(canvas.shape) != self.input_shape:
            raise ValueError(f"onnxruntime session input is {self.input_shape}, got {tuple(canvas.shape)}")
        arrays = self.session.run(self.names, {"canvas": canvas.detach().float().contiguous().numpy()})
        return task_outputs(self.config, {n: torch.from_numpy(a) for n, a in zip(self.names, arrays, strict=True)})
