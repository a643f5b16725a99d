"""``fastpillars-ros memcheck``: the start-up GPU memory estimate of :mod:`fastpillars_ros.runtime.memory` per
precision, with the verdict against free device memory; ``--measure`` also runs the Detector on the GPU at the
caps and prints measured beside estimated (this command module is where the Detector meets the estimate, so
that ``runtime/`` never imports the detector)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastpillars_ros.config import DEFAULT_MODEL, ModelConfig
from fastpillars_ros.runtime.memory import (
    BYTES_PER_ELEMENT,
    DEFAULT_WORKSPACE_MIB,
    GPU_BACKENDS,
    MIB,
    MemoryEstimate,
    estimate_memory,
    fits,
    format_table,
    query_device_memory,
    resolve_backend,
)


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
    from fastpillars_ros.detector import Detector

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
