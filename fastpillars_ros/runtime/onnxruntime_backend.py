"""CPU back end: the fused dense part (canvas -> head maps) run by onnxruntime, in fp32 or INT8.

Why: on the 2-core CPU machine onnxruntime's CPU execution provider ran the tiny dense part 1.4x faster than
torch's fused network in fp32, and about 3x faster again in INT8 (BENCHMARKS.md). The fp32 graph is exported
from the loaded model at construction (about 1 s for tiny) and kept in memory; the INT8 model is quantised
from it at first use and kept in the engine cache (``runtime/quantize.py``). MAPE, decoding and NMS stay in
torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..model.export import export_onnx, output_names, task_outputs
from ..model.fastpillars import FastPillars
from .engine_cache import EngineCache, EngineKey

#: Precisions this back end runs.
ONNXRUNTIME_PRECISIONS = ("fp32", "int8")


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
        precision: "fp32" (the exported graph) or "int8" (its static quantisation, ``runtime/quantize.py``).
        cache: where the INT8 model is cached (default: the engine cache, ``engine_cache.default_cache_dir``).

    Attributes:
        built: True when the INT8 model was quantised now rather than read from the cache (always False for fp32).
        key: the INT8 model's engine-cache key (None for fp32).
    """

    def __init__(self, model: FastPillars, threads: int | None = None, precision: str = "fp32",
                 cache: EngineCache | None = None) -> None:
        import onnxruntime as ort

        if precision not in ONNXRUNTIME_PRECISIONS:
            raise ValueError(f"onnxruntime precision must be one of {list(ONNXRUNTIME_PRECISIONS)}, got {precision!r}")
        self.config, self.precision, self.built = model.config, precision, False
        self.key: EngineKey | None = None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # No spin-waiting after a run: MAPE, decoding and NMS run in torch's thread pool right after, and
        # spinning onnxruntime threads would take the cores from it (measured 1.6x slower end to end on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(model_bytes_or_path: bytes | str) -> ort.InferenceSession:
            return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "dense.onnx")
            if precision == "fp32":
                self.session = session(str(path))
            else:
                from .quantize import cached_int8

                self.session, self.built, self.key = cached_int8(path, model, cache, session, onnxruntime_version())
        self.names = output_names(self.config)
        self.input_shape = (1, *self.config.canvas_shape)

    def forward_dense(self, canvas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``[1, C, H, W]`` float32 canvas (CPU) -> per-task head maps as CPU float32 tensors."""
        if tuple(canvas.shape) != self.input_shape:
            raise ValueError(f"onnxruntime session input is {self.input_shape}, got {tuple(canvas.shape)}")
        arrays = self.session.run(self.names, {"canvas": canvas.detach().float().contiguous().numpy()})
        return task_outputs(self.config, {n: torch.from_numpy(a) for n, a in zip(self.names, arrays, strict=True)})
