"""Per-layer profiling of the dense network, written in the JSON shape of ``trtexec --exportProfile``.

Output: a list whose first element is ``{"count": runs}``, then one entry per layer
``{"name", "timeMs" (total over runs), "averageMs", "medianMs", "percentage"}``, slowest first. With the
TensorRT back end the layers are the engine's (an ``IProfiler`` collects them): TensorRT fuses
conv + bias + activation, so such a group appears as one layer. With torch, each leaf module is a row named
after its module path (``backbone.conv2.0.conv1...``), timed by torch.profiler on the CPU and by CUDA events
on a GPU, so the activation after a conv is its own row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastpillars_ros.config import DEFAULT_MODEL
from fastpillars_ros.runtime.choices import DEVICES, PRECISIONS


def layer_table(samples: dict[str, list[float]], runs: int) -> list[dict[str, Any]]:
    """trtexec-style profile from per-run layer times in ms (``samples[name]`` has one value per run)."""
    total = sum(sum(v) for v in samples.values()) or 1.0
    rows = [{"name": name, "timeMs": sum(v), "averageMs": sum(v) / runs, "medianMs": statistics.median(v),
             "percentage": 100.0 * sum(v) / total} for name, v in samples.items()]
    rows.sort(key=lambda r: -r["timeMs"])
    return [{"count": runs}, *rows]


def profile_torch(model: torch.nn.Module, canvas: torch.Tensor, runs: int = 5) -> list[dict[str, Any]]:
    """Profile ``model.forward_dense(canvas)`` per leaf module.

    On the CPU each leaf module runs inside a ``torch.profiler.record_function`` range and its CPU time is
    read from the profile. On CUDA the layer's GPU time is taken between two CUDA events recorded on the
    stream before and after the module (the profiler does not attribute kernel time to user ranges).
    """
    names = {m: n for n, m in model.named_modules() if not list(m.children()) and n}
    samples: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        model.forward_dense(canvas)  # warm-up, not counted
    hooks = _cuda_event_hooks if canvas.is_cuda else _profiler_range_hooks
    pre, post, timed = hooks(names, samples)
    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    try:
        with torch.no_grad():
            timed(lambda: [model.forward_dense(canvas) for _ in range(runs)])
    finally:
        for h in handles:
            h.remove()
    return layer_table({k: v for k, v in samples.items() if len(v) == runs}, runs)


def _cuda_event_hooks(names: dict[torch.nn.Module, str], samples: dict[str, list[float]]) -> tuple:
    pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def pre(module: torch.nn.Module, _inputs: tuple) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        pending.append((names[module], start, end))

    def post(module: torch.nn.Module, _inputs: tuple, _output: Any) -> None:
        pending[-1][2].record()

    def timed(work: Any) -> None:
        work()
        torch.cuda.synchronize()
        for name, start, end in pending:
            samples[name].append(start.elapsed_time(end))

    return pre, post, timed


def _profiler_range_hooks(names: dict[torch.nn.Module, str], samples: dict[str, list[float]]) -> tuple:
    from torch.profiler import ProfilerActivity, profile, record_function

    ranges: list[Any] = []

    def pre(module: torch.nn.Module, _inputs: tuple) -> None:
        r = record_function(f"layer::{names[module]}")
        r.__enter__()
        ranges.append(r)

    def post(_module: torch.nn.Module, _inputs: tuple, _output: Any) -> None:
        ranges.pop().__exit__(None, None, None)

    def timed(work: Any) -> None:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            work()
        for ev in prof.events():
            if ev.name.startswith("layer::"):
                samples[ev.name[len("layer::"):]].append(ev.cpu_time_total / 1e3)

    return pre, post, timed


def profile_tensorrt(dense: Any, canvas: torch.Tensor, runs: int = 5) -> list[dict[str, Any]]:
    """Profile a :class:`~fastpillars_ros.runtime.tensorrt_backend.TensorRTDense` with an IProfiler."""
    import tensorrt as trt

    samples: dict[str, list[float]] = defaultdict(list)

    class Collector(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            samples[layer_name].append(ms)

    dense.forward_dense(canvas)
    torch.cuda.synchronize()
    dense.context.profiler = Collector()
    for _ in range(runs):
        dense.forward_dense(canvas)
        torch.cuda.synchronize()
    return layer_table(dict(samples), runs)


def format_top(profile_rows: list[dict[str, Any]], top: int = 15) -> str:
    rows = profile_rows[1:top + 1]
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'layer':<{width}s} {'avg ms':>9s} {'median ms':>10s} {'%':>6s}"]
    lines += [f"{r['name']:<{width}s} {r['averageMs']:9.3f} {r['medianMs']:10.3f} {r['percentage']:6.1f}" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# fastpillars-ros profile
# ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_MODEL, help="model config name or YAML path")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--backend", default="torch", choices=["torch", "tensorrt"])
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--input", default=None, help="point file (KITTI .bin or PCD) for the per-stage split; "
                                                     "default: synthetic points over the model's range")
    parser.add_argument("--top", type=int, default=15, help="layers to print")
    parser.add_argument("--output", required=True, help="JSON file (trtexec --exportProfile shape)")


def run(args: argparse.Namespace) -> int:
    from fastpillars_ros.detector import STAGES, Detector

    det = Detector(args.config, args.checkpoint, backend=args.backend, device=args.device,
                   precision=args.precision, warmup=True)
    if args.input:
        from fastpillars_ros.pointcloud import read_points

        points = read_points(args.input, det.point_features, defaults={"dt": 0.0})
    else:
        points = det.synthetic_cloud(60_000)
    stage_ms: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.runs):
        r = det.detect(points)
        for k, v in r.timings.items():
            stage_ms[k].append(v)
    canvas = torch.zeros((1, *det.config.canvas_shape), device=det.device)
    if det.backend == "tensorrt":
        rows = profile_tensorrt(det._dense, canvas, args.runs)
        note = "TensorRT layers; conv + bias + activation fused by TensorRT appear as one layer"
    else:
        dense = det._dense
        if det.precision == "fp16":
            dense, canvas = dense.half_model, canvas.half()
        rows = profile_torch(dense, canvas, args.runs)
        note = "torch leaf modules (conv and its activation are separate rows; the model is BN-fused)"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2))
    print(f"{det.describe()}\nper-layer profile of the dense part ({note}), {args.runs} runs -> {args.output}")
    print(format_top(rows, args.top))
    print("\nper-stage split (median ms over runs, end to end on "
          f"{'the input file' if args.input else 'synthetic points'}):")
    for k in (*STAGES, "total"):
        print(f"  {k:<10s} {np.median(stage_ms[k]):9.2f}")
    print(f"measured {time.strftime('%Y-%m-%d')}")
    return 0
