"""Start-up memory check: estimate what a model needs and compare it with free device memory.

No peer checks before committing memory, so users meet out-of-memory as a crash in the middle of an
engine build or the first frame. The back end is resolved first (:func:`resolve_backend`: with ``auto`` on
a GPU that is TensorRT where it is installed, as the Detector does), and the estimate budgets what that back
end really holds. It is a sum of named components, each in bytes:

* ``cuda_context``: the CUDA context, kernels and library handles a process pays once, outside torch's
  allocator (:data:`CUDA_CONTEXT_MIB`; 700-714 MiB measured on an H100 with torch 2.11 + CUDA 13, cuDNN,
  cuBLAS and our CuPy kernels loaded; smaller on older stacks, so the budget errs high there);
* ``parameters`` (torch) or ``engine`` (TensorRT, onnxruntime): the weights the dense part runs with,
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
  H100 was within 9 % of the other components alone); none for onnxruntime;
* ``buffers``: pre/post-processing buffers (raw cloud bytes, point columns, decorated features,
  pillar maps, occupancy grid, candidates and the NMS mask);
* ``cuda_graph`` (torch): the CUDA graph's own copy of the canvas (fp32), which every frame is copied into.

onnxruntime runs on the CPU: its estimate has no CUDA context and no workspace, and it is host memory.
The accuracy of the estimate was measured on one GPU model (an H100, BENCHMARKS.md), torch back end only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_MODEL, ModelConfig, load_model_config

MIB = 1024 * 1024
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
CUDA_CONTEXT_MIB = 700
DEFAULT_WORKSPACE_MIB = {"tensorrt": 1024, "torch": 64, "onnxruntime": 0}
# The back ends whose memory is on the GPU; onnxruntime runs the dense part on the CPU.
GPU_BACKENDS = ("tensorrt", "torch")
# Bytes of one raw PointCloud2 point budgeted for the device copy of the message (Ouster's 48-byte layout
# is the widest common one).
RAW_POINT_BYTES = 48
# A fraction of free memory kept in reserve: allocator fragmentation and other processes' growth.
HEADROOM = 0.10
ON_INSUFFICIENT = ("error", "fp16", "cpu")


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


def resolve_backend(backend: str, device: str = "cuda") -> str:
    """The back end a Detector with ``backend`` on ``device`` runs ("tensorrt", "torch" or "onnxruntime"),
    resolved as the Detector does: "auto" is TensorRT on a GPU where the package is installed, else torch;
    onnxruntime on the CPU where installed. Decided before anything is allocated, so the memory check
    budgets the back end that will really run."""
    if backend != "auto":
        return backend
    if device == "cpu":
        from .onnxruntime_backend import onnxruntime_version

        return "onnxruntime" if onnxruntime_version() is not None else "torch"
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


@dataclass
class MeasuredMemory:
    """Device memory one Detector really used (bytes), to check an estimate against.

    ``allocated_peak`` is ``torch.cuda.max_memory_allocated`` over construction, warm-up and the frames
    (parameters, activations, encoder, workspaces and buffers that go through torch's allocator).
    ``outside_allocator`` is what the process holds beyond torch's reserved pool: the CUDA context,
    kernels, cuDNN/cuBLAS handles and CuPy's pool. It is read from NVML as the device's used memory
    after the run minus before it, so it assumes no other process changes its usage meanwhile; None
    when NVML (``pynvml``) is not installed, like ``free_before`` (the device's free memory before the run).
    ``weights`` is ``torch.cuda.memory_allocated`` after the Detector was built and before any frame ran
    (its models and fixed buffers); None when not recorded.
    """

    device: str
    allocated_peak: int
    reserved_peak: int
    outside_allocator: int | None
    free_before: int | None = None
    weights: int | None = None

    def groups(self) -> dict[str, int | None]:
        """The measurement split as :func:`measured_groups` splits an estimate (bytes, None: unmeasured)."""
        per_frame = None if self.weights is None else self.allocated_peak - self.weights
        return {"outside allocator": self.outside_allocator, "weights": self.weights, "per frame": per_frame}

    @property
    def total(self) -> int | None:
        """Outside-allocator memory + allocator peak: what the model needs at its peak, in bytes."""
        return None if self.outside_allocator is None else self.outside_allocator + self.allocated_peak

    def to_dict(self) -> dict[str, Any]:
        mib = {"allocated_peak": self.allocated_peak, "reserved_peak": self.reserved_peak,
               "outside_allocator": self.outside_allocator, "weights": self.weights, "total": self.total}
        return {"device": self.device, **{f"{k}_mib": None if v is None else v / MIB for k, v in mib.items()}}


def _nvml_memory(device: int = 0) -> tuple[int, int] | None:
    """(used, free) bytes of the whole device from NVML, which creates no CUDA context; None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device))
        return int(info.used), int(info.free)
    finally:
        pynvml.nvmlShutdown()


def measure_memory(config: str | Path | ModelConfig, precision: str = "fp32", *, backend: str = "torch",
                   max_points: int = 300_000, max_pillars: int | None = None, frames: int = 3) -> MeasuredMemory:
    """Run a Detector (GPU ``backend``: "torch", "tensorrt" or "auto") on CUDA device 0 on ``frames``
    synthetic clouds of ``max_points`` points spread over the model's range (the worst case the caps allow)
    and report what it used.

    Call it in a fresh process: a CUDA context or allocations made earlier in the process would be
    missed (the function refuses when torch already initialised CUDA).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("measuring GPU memory needs a CUDA device; torch sees none")
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA is already initialised in this process: measure in a fresh process")
    from ..detector import Detector

    if resolve_backend(backend) not in GPU_BACKENDS:
        raise ValueError(f"backend {backend!r} does not run on the GPU: measure torch or tensorrt")
    before = _nvml_memory()
    det = Detector(config, backend=backend, device="cuda", precision=precision, max_points=max_points,
                   max_pillars=max_pillars, warmup=False)
    weights = torch.cuda.memory_allocated()
    cloud = det.synthetic_cloud(max_points)
    for _ in range(frames):
        det.detect(cloud)
    torch.cuda.synchronize()
    after = _nvml_memory()
    outside = None if before is None or after is None else after[0] - before[0] - torch.cuda.memory_reserved()
    return MeasuredMemory(torch.cuda.get_device_name(0), int(torch.cuda.max_memory_allocated()),
                          int(torch.cuda.max_memory_reserved()), outside, None if before is None else before[1],
                          int(weights))


def estimate_error(estimate: MemoryEstimate, measured: MeasuredMemory) -> float | None:
    """(estimate - measured) / measured for the totals; None when the measurement has no total."""
    total = measured.total
    return None if total is None else (estimate.total - total) / total


def measured_groups(estimate: MemoryEstimate) -> dict[str, int]:
    """The estimate's components summed into the parts a measurement can tell apart (bytes):

    * ``outside allocator``: the CUDA context, and with TensorRT the engine, its activation memory and its
      workspace (TensorRT allocates them itself, not through torch);
    * ``weights``: what torch holds once the Detector is built (the torch model, torch's fp16 copy);
    * ``per frame``: what a frame adds to torch's allocator peak (activations and workspace on the torch
      path, the encoder, the buffers).
    """
    engine = "outside allocator" if estimate.backend == "tensorrt" else "per frame"
    where = {"cuda_context": "outside allocator", "engine": "outside allocator", "parameters": "weights",
             "fp32_model": "weights", "activations": engine, "workspace": engine, "encoder": "per frame",
             "buffers": "per frame", "cuda_graph": "per frame"}
    groups = dict.fromkeys(("outside allocator", "weights", "per frame"), 0)
    for name, value in estimate.components.items():
        groups[where[name]] += value
    return groups


def estimate_errors(estimate: MemoryEstimate, measured: MeasuredMemory) -> dict[str, float | None]:
    """(estimate - measured) / measured per part of :func:`measured_groups` and for the ``total``; None
    where that part was not measured or measured as zero."""
    est = {**measured_groups(estimate), "total": estimate.total}
    got = {**measured.groups(), "total": measured.total}
    return {k: None if not got[k] else (est[k] - got[k]) / got[k] for k in est}


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


# ------------------------------------------------------------------------------------------------
# fastpillars-ros memcheck
# ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_MODEL,
                        help=f"model config name or YAML path (default: {DEFAULT_MODEL})")
    parser.add_argument("--precision", default="all", choices=[*BYTES_PER_ELEMENT, "all"])
    parser.add_argument("--backend", default="auto", choices=["auto", *sorted(DEFAULT_WORKSPACE_MIB)],
                        help="back end to budget; auto: what a Detector on this machine's GPU runs (TensorRT "
                             "where installed, else torch)")
    parser.add_argument("--max-points", type=int, default=300_000)
    parser.add_argument("--max-pillars", type=int, default=None)
    parser.add_argument("--workspace-mib", type=int, default=None)
    parser.add_argument("--free-mib", type=float, default=None,
                        help="pretend this much device memory is free (works without a GPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--measure", action="store_true",
                        help="also run the Detector on this GPU at the caps and print measured vs estimated "
                             "(one --precision; needs CUDA)")


def run(args: argparse.Namespace) -> int:
    """Print the estimate per precision and the verdict. Exit 0 when the asked precision(s) fit, 3 when
    one does not, 2 when no free amount is known (no GPU and no ``--free-mib``).

    With ``--measure`` the Detector also runs on the GPU and the measured peak is printed beside the
    estimate (the free amount is then read before the run, through NVML when it is installed).
    onnxruntime runs on the CPU: its estimate is host memory, checked only against ``--free-mib``.
    """
    precisions = list(BYTES_PER_ELEMENT) if args.precision == "all" else [args.precision]
    backend = resolve_backend(args.backend)
    measured = None
    if args.measure and backend not in GPU_BACKENDS:
        print(f"memcheck: --measure runs the Detector on the GPU; backend {backend} runs on the CPU",
              file=sys.stderr)
        return 2
    if args.measure:
        if args.precision not in ("fp32", "fp16"):
            print("memcheck: --measure runs the Detector, which takes one --precision: fp32 or fp16",
                  file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print("memcheck: --measure needs a CUDA device (torch sees none); without one, compare with "
                  "--free-mib", file=sys.stderr)
            return 2
        measured = measure_memory(args.config, args.precision, backend=backend, max_points=args.max_points,
                                  max_pillars=args.max_pillars)
    if args.free_mib is not None:
        free, device_name = int(args.free_mib * MIB), "--free-mib"
    elif measured is not None:
        free, device_name = measured.free_before, measured.device
        if free is None:  # no NVML: what is free now plus what the measured run holds
            free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved()
    elif backend not in GPU_BACKENDS:
        free, device_name = None, f"the CPU ({backend}: host memory)"
    else:
        dev = query_device_memory()
        free, device_name = (None, "no CUDA device") if dev is None else (dev.free, dev.name)
    estimates = [estimate_memory(args.config, p, backend=backend, max_points=args.max_points,
                                 max_pillars=args.max_pillars, workspace_mib=args.workspace_mib)
                 for p in precisions]
    verdicts = [None if free is None else fits(e, free) for e in estimates]
    if args.json:
        report: dict[str, Any] = {
            "device": device_name, "free_mib": None if free is None else free / MIB,
            "estimates": [dict(e.to_dict(), fits=v) for e, v in zip(estimates, verdicts, strict=True)]}
        if measured is not None:
            report["measured"] = measured.to_dict()
            report["estimate_error"] = estimate_error(estimates[0], measured)
            report["estimate_errors"] = estimate_errors(estimates[0], measured)
        print(json.dumps(report, indent=2))
    else:
        print(f"device: {device_name}")
        for e in estimates:
            print(format_table(e, free))
        if measured is not None:
            print(format_measured(estimates[0], measured))
    if free is None:
        if not args.json:
            print(f"free memory unknown ({device_name}): pass --free-mib to check an amount")
        return 2
    return 0 if all(verdicts) else 3


def format_measured(estimate: MemoryEstimate, measured: MeasuredMemory) -> str:
    """Measured vs estimated per part the measurement can tell apart (:func:`measured_groups`), each with
    its error, and the totals."""
    est = {**measured_groups(estimate), "total": estimate.total}
    got = {**measured.groups(), "total": measured.total}
    errors = estimate_errors(estimate, measured)
    lines = [f"measured on {measured.device} ({estimate.max_points:,} points per frame, {estimate.backend}):",
             f"  {'':<18s} {'estimate':>10s} {'measured':>10s}"]
    for name, value in est.items():
        if got[name] is None:
            how = "install nvidia-ml-py for NVML" if name in ("outside allocator", "total") else "not recorded"
            lines.append(f"  {name:<18s} {value / MIB:10.1f} {'-':>10s}     (not measured: {how})")
            continue
        error = "" if errors[name] is None else f" (error {errors[name]:+.1%})"
        lines.append(f"  {name:<18s} {value / MIB:10.1f} {got[name] / MIB:10.1f} MiB{error}")
    lines.append(f"  allocator peak {measured.allocated_peak / MIB:.1f} MiB, reserved peak "
                 f"{measured.reserved_peak / MIB:.1f} MiB")
    return "\n".join(lines)
