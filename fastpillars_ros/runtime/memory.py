"""Start-up memory check: estimate what a model needs and compare it with free device memory.

No peer checks before committing memory, so users meet out-of-memory as a crash in the middle of an
engine build or the first frame. The back end is resolved first (:func:`resolve_backend`: with ``auto`` on
a GPU that is TensorRT where it is installed, as the Detector does), and the estimate budgets what that back
end really holds. It is a sum of named components, each in bytes:

* ``cuda_context``: the CUDA context, kernels and library handles a process pays once, outside torch's
  allocator (:data:`CUDA_CONTEXT_MIB`; 700-714 MiB measured on an H100 with torch 2.11 + CUDA 13, cuDNN,
  cuBLAS and our CuPy kernels loaded; smaller on older stacks, so the budget errs high there);
* ``parameters`` (torch) or ``engine`` (TensorRT, onnxruntime, OpenVINO): the weights the dense part runs with,
  parameter count of the deployed (fused) network x bytes per element of the precision (fp32 4, fp16/bf16 2,
  int8 1) - the familiar "N params x bytes" rule of thumb; an engine's size is its weights;
* ``fp32_model``: the fp32 torch model that stays on the device beside a separate copy of the dense
  weights (the encoder runs from it): torch fp16 (a half copy) and TensorRT (the engine's copy);
* ``activations``: peak activation memory of the dense network for the config's canvas at batch 1,
  traced layer by layer on the ``meta`` device (no memory is allocated for the trace), plus the
  tensors that stay alive across layers (the canvas, the stage-3 skip into the neck);
* ``encoder``: MAPE per-point and per-pillar tensors for the configured maximum point count;
* ``workspace``: TensorRT workspace (:data:`DEFAULT_WORKSPACE_MIB`, 1,024 MiB, the limit the engine is built
  with), or the cuDNN/cuBLAS workspaces torch allocates (tens of MiB: the torch-path allocator peak on an
  H100 was within 9 % of the other components alone); none for onnxruntime and OpenVINO;
* ``buffers``: pre/post-processing buffers (raw cloud bytes, point columns, decorated features,
  pillar maps, occupancy grid, candidates and the NMS mask);
* ``cuda_graph`` (torch): the CUDA graph's own copy of the canvas (fp32), which every frame is copied into.

onnxruntime and OpenVINO run on the CPU: their estimate has no CUDA context and no workspace, and it is host memory.
The accuracy of the estimate was measured on one GPU model (an H100, BENCHMARKS.md), torch back end only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, load_model_config
from .choices import CPU_BACKENDS, CPU_BACKENDS_BF16
from .cpu_features import amx_bf16, bf16_units

MIB = 1024 * 1024
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
CUDA_CONTEXT_MIB = 700
DEFAULT_WORKSPACE_MIB = {"tensorrt": 1024, "torch": 64, "onnxruntime": 0, "openvino": 0}
# The back ends whose memory is on the GPU; onnxruntime and OpenVINO run the dense part on the CPU.
GPU_BACKENDS = ("tensorrt", "torch")
# Bytes of one raw PointCloud2 point budgeted for the device copy of the message (Ouster's 48-byte layout
# is the widest common one).
RAW_POINT_BYTES = 48
# A fraction of free memory kept in reserve: allocator fragmentation and other processes' growth.
HEADROOM = 0.10


class InsufficientMemoryError(RuntimeError):
    """The model does not fit in free device memory; the message lists needed vs free per component."""


@dataclass
class MemoryEstimate:
    """Estimated device memory by component (bytes) for one model, precision and set of caps."""

    config: str
    precision: str
    backend: str
    max_points: int
    max_pillars: int
    num_parameters: int
    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "precision": self.precision, "backend": self.backend,
                "max_points": self.max_points, "max_pillars": self.max_pillars,
                "num_parameters": self.num_parameters,
                "components_mib": {k: v / MIB for k, v in self.components.items()}, "total_mib": self.total / MIB}


@dataclass
class DeviceMemory:
    """Free and total memory of one CUDA device (bytes)."""

    name: str
    free: int
    total: int
    unified: bool = False


@functools.lru_cache(maxsize=8)
def _trace(config: ModelConfig) -> tuple[int, int]:
    """(floating-point state elements of the deployed, fully fused model; peak live activation elements
    of ``forward_dense`` at batch 1). Built and run on the ``meta`` device: nothing is allocated, even
    for the official model.

    For every leaf module, input + output are alive at once; on top of that the canvas (input of the
    whole network) and the backbone's stage-3 output (kept for the neck) stay alive.
    """
    from ..model import build_model

    with torch.device("meta"):
        model = build_model(config).eval()
        model.fuse("full")
        canvas = torch.empty((1, *config.canvas_shape))
    n_params = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    peak = 0

    def hook(_module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal peak
        outs = output if isinstance(output, (tuple, list)) else (output,)
        peak = max(peak, sum(t.numel() for t in (*inputs, *outs) if isinstance(t, torch.Tensor)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        x4, _ = model.backbone(canvas)
        model.forward_dense(canvas)
    for h in handles:
        h.remove()
    return n_params, peak + canvas.numel() + x4.numel()


def parameter_count(config: str | Path | ModelConfig) -> int:
    """Floating-point parameters (and BN statistics) of the deployed, fully fused model."""
    return _trace(load_model_config(config))[0]


def cpu_backend_version(backend: str) -> str | None:
    """The installed version of a CPU back end's library ("openvino" or "onnxruntime"), None when missing."""
    if backend == "openvino":
        from .openvino_backend import openvino_version

        return openvino_version()
    from .onnxruntime_backend import onnxruntime_version

    return onnxruntime_version()


def resolve_backend(backend: str, device: str = "cuda", *, auto_int8: bool = True) -> str:
    """The back end a Detector with ``backend`` on ``device`` runs ("tensorrt", "torch", "openvino" or
    "onnxruntime"), resolved as the Detector does: "auto" is TensorRT on a GPU where the package is installed,
    else torch; on the CPU the first of :data:`~.choices.CPU_BACKENDS` installed, else torch. OpenVINO comes first
    (:data:`~.choices.CPU_BACKENDS_BF16`) where auto will run bf16: on a processor with AMX bf16 units, or with
    AVX-512 BF16 when ``auto_int8`` is False (weights whose INT8 accuracy was not accepted, so that they run bf16
    rather than onnxruntime fp32). Decided before anything is allocated, so the memory check budgets the back end
    that will really run."""
    if backend != "auto":
        return backend
    if device == "cpu":
        order = CPU_BACKENDS_BF16 if amx_bf16() or (not auto_int8 and bf16_units()) else CPU_BACKENDS
        return next((b for b in order if cpu_backend_version(b) is not None), "torch")
    from .tensorrt_backend import tensorrt_version

    return "tensorrt" if tensorrt_version() is not None else "torch"


def estimate_memory(config: str | Path | ModelConfig, precision: str = "fp32", *, backend: str = "torch",
                    max_points: int = 300_000, max_pillars: int | None = None,
                    workspace_mib: int | None = None) -> MemoryEstimate:
    """Estimate memory for running ``config`` at ``precision`` on a resolved ``backend`` (see the module
    docstring; "auto" is resolved for a GPU with :func:`resolve_backend`)."""
    cfg = load_model_config(config)
    if precision not in BYTES_PER_ELEMENT:
        raise ValueError(f"precision must be one of {sorted(BYTES_PER_ELEMENT)}, got {precision!r}")
    backend = resolve_backend(backend)
    if backend not in DEFAULT_WORKSPACE_MIB:
        raise ValueError(f"backend must be one of {sorted(DEFAULT_WORKSPACE_MIB)} or 'auto', got {backend!r}")
    if max_points <= 0:
        raise ValueError(f"max_points must be positive, got {max_points}")
    nx, ny = cfg.grid_size
    max_pillars = min(max_points, nx * ny) if max_pillars is None else max_pillars
    bpe = BYTES_PER_ELEMENT[precision]
    n_params, activation_elements = _trace(cfg)
    c = cfg.encoder.num_filters
    f = cfg.num_decorated_features
    # MAPE runs in fp32 in every back end: per point f, s, exp(s - max) and e*f (each L x C), per pillar
    # max, softmax denominator, weighted sum and the result (each M x C).
    encoder = 4 * (4 * max_points * c + 4 * max_pillars * c + max_points * f)
    ws = DEFAULT_WORKSPACE_MIB[backend] if workspace_mib is None else workspace_mib
    n_tasks = len(cfg.tasks)
    pre = cfg.decode.pre_max
    buffers = (
        max_points * RAW_POINT_BYTES                      # raw PointCloud2 bytes on the device
        + max_points * cfg.num_point_features * 4         # extracted point columns (float32)
        + max_points * (8 + 8 + 4)                        # point -> pillar, point index, keep flags
        + nx * ny * 4 * 2                                 # occupancy grid and its prefix sum (int32)
        + max_pillars * 2 * 4                             # pillar coords
        + n_tasks * pre * (7 + 4) * 4                     # candidates: box, score, label, task, iou
        + n_tasks * pre * math.ceil(pre / 64) * 8         # NMS suppression bitmask
    )
    weights = "parameters" if backend == "torch" else "engine"
    components = {"cuda_context": CUDA_CONTEXT_MIB * MIB if backend in GPU_BACKENDS else 0,
                  weights: n_params * bpe}
    if backend != "torch" or precision != "fp32":
        components["fp32_model"] = n_params * 4
    components.update(activations=activation_elements * bpe, encoder=encoder, workspace=ws * MIB,
                      buffers=buffers)
    if backend == "torch":
        components["cuda_graph"] = math.prod(cfg.canvas_shape) * 4
    components = {k: v for k, v in components.items() if v}
    return MemoryEstimate(cfg.name, precision, backend, max_points, max_pillars, n_params, components)


def query_device_memory(device: int = 0) -> DeviceMemory | None:
    """Free/total memory of CUDA device ``device`` via torch, or None when no CUDA device is visible."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(device)
    props = torch.cuda.get_device_properties(device)
    # Jetson (integrated GPU) shares system memory with the CPU: "free" competes with every process.
    return DeviceMemory(props.name, int(free), int(total), unified=bool(getattr(props, "is_integrated", False)))


def fits(estimate: MemoryEstimate, free_bytes: int) -> bool:
    """True when the estimate fits in ``free_bytes`` minus the :data:`HEADROOM` reserve."""
    return estimate.total <= free_bytes * (1.0 - HEADROOM)


def format_table(estimate: MemoryEstimate, free_bytes: int | None = None) -> str:
    """Human-readable per-component table, with the parameter rule of thumb and the verdict."""
    bpe = BYTES_PER_ELEMENT[estimate.precision]
    lines = [f"{estimate.config} / {estimate.precision} / {estimate.backend}: "
             f"max_points {estimate.max_points:,}, max_pillars {estimate.max_pillars:,}"]
    for name, value in estimate.components.items():
        lines.append(f"  {name:<13s} {value / MIB:10.1f} MiB")
    lines.append(f"  {'total':<13s} {estimate.total / MIB:10.1f} MiB")
    p = estimate.num_parameters * bpe
    lines.append(f"  rule of thumb: {estimate.num_parameters:,} params x {bpe} B = {p / 1e9:.3f} GB "
                 f"= {p / 2**30:.3f} GiB")
    if free_bytes is not None:
        verdict = "fits" if fits(estimate, free_bytes) else "DOES NOT FIT"
        lines.append(f"  free {free_bytes / MIB:.0f} MiB (keeping {HEADROOM:.0%} headroom): {verdict}")
    return "\n".join(lines)


def insufficient_message(estimate: MemoryEstimate, device: DeviceMemory) -> str:
    """The one message a user sees when the model does not fit: needed vs free and the knobs that help."""
    parts = ", ".join(f"{k} {v / MIB:.0f}" for k, v in estimate.components.items())
    shared = " (integrated GPU: this memory is shared with the CPU and every other process)" if device.unified else ""
    return (f"not enough GPU memory on {device.name}{shared}: {estimate.config} at {estimate.precision} needs "
            f"{estimate.total / MIB:.0f} MiB ({parts} MiB) but {device.free / MIB:.0f} MiB are free "
            f"(with {HEADROOM:.0%} headroom). Knobs that help: precision fp16 (parameters/activations halve), "
            f"a smaller max_points (now {estimate.max_points:,}), backend torch (smaller workspace), "
            f"device cpu, or on_insufficient_memory: fp16|cpu to fall back automatically.")
