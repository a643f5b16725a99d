"""TensorRT back end for the dense part (canvas -> head maps), through TensorRT's Python API.

The fused dense network is exported to ONNX (static ``[1, C, H, W]`` input), built into an engine at
fp32 or fp16 (cached by :class:`~fastpillars_ros.runtime.engine_cache.EngineCache`), and executed with
``execute_async_v3`` on torch's current CUDA stream, reading the canvas from and writing the head maps
into torch tensors directly (no copies, no pycuda).

Requires a CUDA GPU and the ``tensorrt`` package (TensorRT 10). Nothing here runs on this project's CI
machines; the cache decisions are unit-tested with a stubbed builder, and GPU tests
(``@pytest.mark.gpu``) compare engine and torch outputs where a GPU exists.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..model import FastPillars
from ..model.export import export_onnx, output_names, task_outputs
from .engine_cache import EngineCache, EngineKey, sha256_file

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 1024


def tensorrt_version() -> str | None:
    """Installed TensorRT version, or None."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def engine_key(onnx_path: Path, precision: str, input_shape: tuple[int, ...], device: int = 0) -> EngineKey:
    """The cache key of an engine for this ONNX graph on this GPU and TensorRT version."""
    props = torch.cuda.get_device_properties(device)
    return EngineKey(sha256_file(onnx_path), tensorrt_version() or "none", props.name,
                     f"{props.major}.{props.minor}", precision, tuple(int(s) for s in input_shape))


def _make_progress_monitor(trt: Any, stream=sys.stderr) -> Any:
    class BuildProgress(trt.IProgressMonitor):
        """Prints one line per finished build phase (engine builds take minutes on large models)."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._steps: dict[str, tuple[int, float]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._steps[phase_name] = (num_steps, time.perf_counter())
                if parent_phase is None:
                    print(f"[tensorrt] {phase_name} ({num_steps} steps) ...", file=stream, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total, _ = self._steps.get(phase_name, (0, 0.0))
                if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                    print(f"[tensorrt]   {phase_name}: {step + 1}/{total}", file=stream, flush=True)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                _, t0 = self._steps.pop(phase_name, (0, time.perf_counter()))
                print(f"[tensorrt] {phase_name} done in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)

    return BuildProgress()


def build_engine(onnx_path: str | Path, precision: str = "fp16", workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 show_progress: bool = True) -> bytes:
    """Build a serialised engine from an ONNX file (fp32 or fp16); raises RuntimeError with the parser's
    or builder's messages on failure."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the profiler
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision != "fp32":
        raise ValueError(f"engine precision must be fp32 or fp16 (int8 needs a calibration set), got {precision!r}")
    if show_progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _make_progress_monitor(trt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


class TensorRTDense:
    """Drop-in for :meth:`FastPillars.forward_dense`: runs a cached/built engine on torch CUDA tensors.

    Args:
        model: the (fused or not) torch model whose dense part becomes the engine.
        precision: "fp32" or "fp16".
        cache: engine cache (default directory: :func:`default_cache_dir`).
        workspace_mib: builder workspace limit.
    """

    def __init__(self, model: FastPillars, precision: str = "fp16", cache: EngineCache | None = None,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> None:
        import tensorrt as trt

        self.config = model.config
        self.precision = precision
        shape = (1, *self.config.canvas_shape)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, Path(tmp) / "dense.onnx")
            key = engine_key(onnx_path, precision, shape)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine, self.built = (cache or EngineCache()).get_or_build(
                key, lambda: build_engine(onnx_path, precision, workspace_mib),
                self._runtime.deserialize_cuda_engine)
        self.key = key
        self.context = self.engine.create_execution_context()
        self.names = output_names(self.config)
        self._outputs = {
            name: torch.empty(tuple(self.engine.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            for name in self.names
        }
        for name, t in self._outputs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self._input = torch.zeros(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address("canvas", self._input.data_ptr())

    @property
    def device_memory_bytes(self) -> int:
        """Activation memory TensorRT allocates for one execution context."""
        return int(getattr(self.engine, "device_memory_size_v2", self.engine.device_memory_size))

    def forward_dense(self, canvas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        if canvas.shape != self._input.shape:
            raise ValueError(f"engine input is {tuple(self._input.shape)}, got {tuple(canvas.shape)}")
        self._input.copy_(canvas)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return task_outputs(self.config, self._outputs)
