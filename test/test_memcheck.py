"""Start-up GPU memory check: the arithmetic, the verdict and the memcheck command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastpillars_ros.cli import main as cli_main
from fastpillars_ros.memcheck_command import MeasuredMemory, estimate_error, format_measured
from fastpillars_ros.model import build_model
from fastpillars_ros.runtime.memory import (
    MIB,
    DeviceMemory,
    estimate_memory,
    fits,
    insufficient_message,
    parameter_count,
)


@pytest.mark.parametrize("config", ["kitti", "nuscenes_official"])
def test_parameter_bytes_equal_the_deployed_state_dict_size(config):
    model = build_model(config).eval().fuse("full")
    exact = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    assert parameter_count(config) * 4 == exact
    assert estimate_memory(config, "fp32").components["parameters"] == exact


def test_parameter_bytes_scale_with_the_precision():
    sizes = {p: estimate_memory("kitti", p).components["parameters"] for p in ("fp32", "fp16", "bf16", "int8")}
    assert sizes["fp16"] * 2 == sizes["fp32"] == sizes["int8"] * 4
    assert sizes["bf16"] == sizes["fp16"]


def test_activations_cover_the_largest_layer_and_halve_in_fp16():
    e32, e16 = estimate_memory("nuscenes_official", "fp32"), estimate_memory("nuscenes_official", "fp16")
    # Stage 1 runs 64 x 720 x 720 convs: input + output of one of them, plus the canvas, is a lower bound.
    assert e32.components["activations"] >= 3 * 64 * 720 * 720 * 4
    assert e16.components["activations"] * 2 == e32.components["activations"]


def test_point_caps_change_encoder_and_buffer_memory():
    small, large = estimate_memory("kitti", max_points=50_000), estimate_memory("kitti", max_points=500_000)
    assert small.components["encoder"] < large.components["encoder"]
    assert small.components["buffers"] < large.components["buffers"]
    assert small.components["parameters"] == large.components["parameters"]


def test_verdict_keeps_headroom():
    e = estimate_memory("kitti", "fp16")
    assert fits(e, int(e.total / 0.85))
    assert not fits(e, e.total)  # exactly the estimate leaves no headroom


def test_insufficient_message_lists_components_and_knobs():
    e = estimate_memory("kitti", "fp32")
    msg = insufficient_message(e, DeviceMemory("Jetson Orin", free=512 * MIB, total=8192 * MIB, unified=True))
    for word in ("cuda_context", "parameters", "activations", "workspace", "512 MiB are free", "fp16", "max_points",
                 "cpu", "shared with the CPU"):
        assert word in msg


def test_memcheck_exits_0_when_it_fits_and_3_when_it_does_not(capsys):
    assert cli_main(["memcheck", "--config", "kitti", "--precision", "fp16", "--free-mib", "80000"]) == 0
    assert "fits" in capsys.readouterr().out
    assert cli_main(["memcheck", "--config", "kitti", "--precision", "fp32", "--free-mib", "500"]) == 3
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_memcheck_prints_every_precision_and_the_rule_of_thumb(capsys):
    cli_main(["memcheck", "--config", "kitti", "--free-mib", "80000"])
    out = capsys.readouterr().out
    for p in ("fp32", "fp16", "bf16", "int8"):
        assert f"kitti / {p} /" in out
    assert "params x 4 B" in out and "GiB" in out


def test_memcheck_json_is_machine_readable(capsys):
    assert cli_main(["memcheck", "--config", "kitti", "--precision", "int8", "--free-mib", "100", "--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    (est,) = data["estimates"]
    assert est["precision"] == "int8" and est["fits"] is False
    assert est["total_mib"] == pytest.approx(sum(est["components_mib"].values()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_memcheck_without_gpu_or_free_amount_says_so_and_exits_2(capsys):
    assert cli_main(["memcheck", "--config", "kitti", "--precision", "fp16"]) == 2
    assert "--free-mib" in capsys.readouterr().out


def test_estimate_error_compares_totals_and_splits_context_from_allocator():
    est = estimate_memory("tiny", "fp32", backend="torch", max_points=100_000)
    context = est.components["cuda_context"]
    measured = MeasuredMemory("card", allocated_peak=est.total - context, reserved_peak=est.total,
                              outside_allocator=context // 2)
    assert estimate_error(est, measured) == pytest.approx(context / 2 / measured.total)
    text = format_measured(est, measured)
    assert "through allocator" in text and "estimate error +" in text
    unmeasured = MeasuredMemory("card", allocated_peak=1, reserved_peak=1, outside_allocator=None)
    assert estimate_error(est, unmeasured) is None
    assert "nvidia-ml-py" in format_measured(est, unmeasured)


def test_measure_takes_exactly_one_runnable_precision(capsys):
    assert cli_main(["memcheck", "--config", "tiny", "--precision", "all", "--measure"]) == 2
    assert "fp32 or fp16" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_measure_without_gpu_says_so_and_exits_2(capsys):
    assert cli_main(["memcheck", "--config", "tiny", "--precision", "fp32", "--measure"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def _tensorrt_missing() -> bool:
    from fastpillars_ros.runtime.tensorrt_backend import tensorrt_version

    return tensorrt_version() is None


@pytest.mark.gpu
@pytest.mark.parametrize(("config", "precision", "points", "backend"), [
    ("tiny", "fp32", 120_000, "torch"), ("nuscenes_official", "fp32", 250_000, "torch"),
    ("nuscenes_official", "fp16", 250_000, "torch"),
    pytest.param("tiny", "fp16", 120_000, "tensorrt",
                 marks=pytest.mark.skipif(_tensorrt_missing(), reason="TensorRT is not installed")),
])
def test_estimate_is_within_15_percent_of_the_measured_peak(config, precision, points, backend):
    # A fresh process: the context and the allocator peak belong to this one Detector alone.
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "fastpillars_ros.cli", "memcheck", "--config", config,
                           "--precision", precision, "--backend", backend, "--max-points", str(points),
                           "--measure", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    print(json.dumps(report, indent=1))
    assert report["measured"]["outside_allocator_mib"] is not None, "NVML (nvidia-ml-py) is needed to measure"
    assert abs(report["estimate_error"]) <= 0.15, report
