"""CPU back end: the fused dense part (canvas -> head maps) run by OpenVINO's CPU plugin, in fp32, bf16 or INT8.

Why: OpenVINO's CPU plugin runs convolutions through oneDNN with the processor's own instructions (AVX-512
VNNI for INT8, AVX-512 BF16 / AMX for bf16) and a blocked memory layout. On the 2-core AMD EPYC machine the
tiny360 dense part alone takes 14.5 ms in INT8 (onnxruntime: 21.2 ms, the same quantised graph) and 21-24 ms in
bf16, whose scores stay within 0.01 of fp32 (INT8: up to 0.26-0.29); fp32 is onnxruntime's speed (43 ms;
BENCHMARKS.md). The graphs are the ones the onnxruntime back end runs: the fp32 export of the loaded model
(``model/export.py``) and, for INT8, its QDQ quantisation from the engine cache (``runtime/quantize.py``, built
by onnxruntime's quantiser, so INT8 needs onnxruntime installed too). OpenVINO compiles a graph in about 0.3 s,
so compiled models are not cached.

bf16 is fast only on a processor with native bf16 arithmetic (:func:`native_bf16`); elsewhere OpenVINO would
emulate it at fp32 speed, so ``precision="auto"`` picks INT8 there (``detector.py``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..model.export import export_onnx, output_names, task_outputs
from ..model.fastpillars import FastPillars
from .engine_cache import EngineCache, EngineKey

#: Precisions this back end runs (OpenVINO's inference precision hint for each: ``INT8`` runs the quantised
#: graph's convolutions in int8 and the rest in the processor's fastest exact-enough type, bf16 where native).
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16"}

log = logging.getLogger(__name__)


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when it cannot be imported."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.get_version())


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively on this processor (``BF16`` among its optimisation
    capabilities: AVX-512 BF16 or AMX); False when OpenVINO is not installed."""
    if openvino_version() is None:
        return False
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoDense:
    """``forward_dense`` of a model through an OpenVINO CPU compiled model.

    Args:
        model: the torch model (any fusion level; the export fuses a copy).
        threads: inference threads (default: torch's thread count, so both libraries use the same cores).
        precision: "fp32", "bf16" (fp32 graph computed in bf16; needs :func:`native_bf16` to be fast) or "int8"
            (the QDQ graph of ``runtime/quantize.py``).
        cache: where the INT8 graph is cached (default: the engine cache, ``engine_cache.default_cache_dir``).

    Attributes:
        built: True when the INT8 graph was quantised now rather than read from the cache (always False
            otherwise).
        key: the INT8 graph's engine-cache key (None for fp32 and bf16).
        inference_precision: the element type OpenVINO computes the non-quantised layers in ("f32", "bf16").
    """

    def __init__(self, model: FastPillars, threads: int | None = None, precision: str = "bf16",
                 cache: EngineCache | None = None) -> None:
        import openvino

        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"openvino precision must be one of {list(OPENVINO_PRECISIONS)}, got {precision!r}")
        self.config, self.precision, self.built = model.config, precision, False
        self.key: EngineKey | None = None
        core = openvino.Core()
        # One stream and the latency hint: a frame is one request, run on every thread we are given. Threads
        # are not pinned to cores: the node shares them with torch (MAPE, decoding) and with other nodes.
        properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                                      "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}
        if precision in _HINTS:
            properties["INFERENCE_PRECISION_HINT"] = _HINTS[precision]

        def compile_graph(graph: bytes) -> Any:
            return core.compile_model(core.read_model(graph), "CPU", properties)

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "dense.onnx")
            if precision != "int8":
                self.compiled = compile_graph(path.read_bytes())
            else:
                from .onnxruntime_backend import onnxruntime_version
                from .quantize import cached_int8

                # The same cached QDQ graph as the onnxruntime back end's (same key): quantised once for both.
                self.compiled, self.built, self.key = cached_int8(path, model, cache, compile_graph,
                                                                     onnxruntime_version())
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if precision == "bf16" and self.inference_precision != "bf16":
            log.warning("openvino bf16: this processor has no native bf16, so OpenVINO computes in %s at fp32's "
                        "speed; precision 'int8' is the fast choice here", self.inference_precision)
        self.request = self.compiled.create_infer_request()
        self.names = output_names(self.config)
        self._ports = {p.get_any_name(): p for p in self.compiled.outputs}
        self.input_shape = (1, *self.config.canvas_shape)

    def forward_dense(self, canvas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``[1, C, H, W]`` float32 canvas (CPU) -> per-task head maps as CPU float32 tensors."""
        if tuple(canvas.shape) != self.input_shape:
            raise ValueError(f"openvino model input is {self.input_shape}, got {tuple(canvas.shape)}")
        # share_inputs: the canvas is read in place (no 6 MB copy); outputs are copies (share_outputs=False), so
        # the next frame cannot overwrite maps handed out.
        result = self.request.infer({0: canvas.detach().float().contiguous().numpy()}, share_inputs=True)
        return task_outputs(self.config, {n: torch.from_numpy(result[self._ports[n]]) for n in self.names})
