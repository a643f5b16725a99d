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
from fastpillars_ros.config import load_model_config
from fastpillars_ros.model import build_model
from fastpillars_ros.runtime.memory import (
    MIB,
    DeviceMemory,
    InsufficientMemoryError,
    estimate_memory,
    fits,
    insufficient_message,
    parameter_count,
    resolve_backend,
)
from fastpillars_ros.tools.memcheck import (
    MeasuredMemory,
    estimate_error,
    estimate_errors,
    format_measured,
    measured_groups,
)


@pytest.mark.parametrize("config", ["kitti", "nuscenes_official"])
def test_parameter_bytes_equal_the_deployed_state_dict_size(config):
    model = build_model(config).eval().fuse("full")
    exact = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    assert parameter_count(config) * 4 == exact
    assert estimate_memory(config, "fp32", backend="torch").components["parameters"] == exact


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
    est = estimate_memory("tiny360", "fp32", backend="torch", max_points=100_000)
    context = est.components["cuda_context"]
    measured = MeasuredMemory("card", allocated_peak=est.total - context, reserved_peak=est.total,
                              outside_allocator=context // 2)
    assert estimate_error(est, measured) == pytest.approx(context / 2 / measured.total)
    assert "outside allocator" in format_measured(est, measured)
    unmeasured = MeasuredMemory("card", allocated_peak=1, reserved_peak=1, outside_allocator=None)
    assert estimate_error(est, unmeasured) is None
    assert "nvidia-ml-py" in format_measured(est, unmeasured)


# ---- the back end is resolved before the budget: what will really run ----------------------------

def _stub_installed(monkeypatch, tensorrt: str | None, onnxruntime: str | None, openvino: str | None = None
                    ) -> None:
    from fastpillars_ros.runtime import onnxruntime_backend, openvino_backend, tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "tensorrt_version", lambda: tensorrt)
    monkeypatch.setattr(onnxruntime_backend, "onnxruntime_version", lambda: onnxruntime)
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: openvino)


@pytest.mark.parametrize(("tensorrt", "device", "expected"), [
    ("10.3", "cuda", "tensorrt"), (None, "cuda", "torch"), ("10.3", "cpu", "onnxruntime")])
def test_auto_resolves_to_the_back_end_the_detector_runs(monkeypatch, tensorrt, device, expected):
    _stub_installed(monkeypatch, tensorrt, "1.20")
    assert resolve_backend("auto", device) == expected
    assert resolve_backend("torch", device) == "torch"


def test_auto_on_the_cpu_without_onnxruntime_is_openvino_and_without_either_torch(monkeypatch):
    _stub_installed(monkeypatch, None, None, "2026.4")
    assert resolve_backend("auto", "cpu") == "openvino"
    _stub_installed(monkeypatch, None, None, None)
    assert resolve_backend("auto", "cpu") == "torch"


def test_tensorrt_budget_has_its_1024_mib_workspace_engine_and_the_fp32_model():
    n = parameter_count("nuscenes_official")
    e = estimate_memory("nuscenes_official", "fp16", backend="tensorrt", max_points=250_000)
    assert e.components["workspace"] == 1024 * MIB
    assert e.components["engine"] == n * 2  # the engine's weights at fp16
    assert e.components["fp32_model"] == n * 4  # the torch model stays on the device for the encoder
    assert "parameters" not in e.components


def test_torch_budget_holds_one_model_in_fp32_and_two_in_fp16():
    n = parameter_count("tiny360")
    e32 = estimate_memory("tiny360", "fp32", backend="torch")
    e16 = estimate_memory("tiny360", "fp16", backend="torch")
    assert e32.components["workspace"] == 64 * MIB and "fp32_model" not in e32.components
    assert e16.components["parameters"] == n * 2 and e16.components["fp32_model"] == n * 4
    c, h, w = load_model_config("tiny360").canvas_shape
    assert e16.components["cuda_graph"] == c * h * w * 4  # the graph's own fp32 canvas


def test_onnxruntime_budget_is_host_memory_without_context_or_workspace():
    e = estimate_memory("tiny360", "fp32", backend="onnxruntime", max_points=120_000)
    assert set(e.components) == {"engine", "fp32_model", "activations", "encoder", "buffers"}
    torch_e = estimate_memory("tiny360", "fp32", backend="torch", max_points=120_000)
    assert e.components["activations"] == torch_e.components["activations"]


def test_auto_budget_with_tensorrt_installed_is_the_tensorrt_budget(monkeypatch):
    _stub_installed(monkeypatch, "10.3", None)
    auto = estimate_memory("tiny360", "fp16", backend="auto")
    assert auto.backend == "tensorrt"
    assert auto.components == estimate_memory("tiny360", "fp16", backend="tensorrt").components


def test_detector_with_auto_on_a_gpu_refuses_when_the_tensorrt_budget_does_not_fit(monkeypatch):
    # Stubbed device facts: a GPU with enough free memory for the torch budget but not for TensorRT's.
    from fastpillars_ros import detector as detector_module
    from fastpillars_ros.detector import Detector

    trt = estimate_memory("tiny360", "fp32", backend="tensorrt", max_points=120_000)
    free = int(trt.total * 0.95 / (1 - 0.10))
    assert fits(estimate_memory("tiny360", "fp32", backend="torch", max_points=120_000), free)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(detector_module, "query_device_memory",
                        lambda: DeviceMemory("Jetson Orin", free=free, total=8 * 1024 * MIB, unified=True))
    _stub_installed(monkeypatch, "10.3", None)
    with pytest.raises(InsufficientMemoryError, match="workspace 1024"):
        Detector("tiny360", device="cuda", backend="auto", max_points=120_000, warmup=False)
    _stub_installed(monkeypatch, None, None)  # without TensorRT, auto runs torch, whose budget fits
    det = Detector.__new__(Detector)
    det.config, det.max_points, det.max_pillars = load_model_config("tiny360"), 120_000, None
    assert det._resolve_device("cuda", "fp32", "auto", "error") == ("cuda", "fp32")


def test_measurement_is_compared_per_part_it_can_tell_apart():
    est = estimate_memory("tiny360", "fp32", backend="torch", max_points=100_000)
    groups = measured_groups(est)
    assert sum(groups.values()) == est.total
    assert groups["weights"] == est.components["parameters"]
    measured = MeasuredMemory("card", allocated_peak=groups["weights"] + groups["per frame"] // 2,
                              reserved_peak=est.total, outside_allocator=groups["outside allocator"],
                              weights=groups["weights"])
    errors = estimate_errors(est, measured)
    assert errors["outside allocator"] == 0 and errors["weights"] == 0
    assert errors["per frame"] == pytest.approx(1.0)  # the estimate is twice the measured per-frame memory
    text = format_measured(est, measured)
    assert "per frame" in text and "error +100.0%" in text


def test_tensorrt_engine_activations_and_workspace_are_measured_outside_the_allocator():
    est = estimate_memory("tiny360", "fp16", backend="tensorrt")
    c = est.components
    groups = measured_groups(est)
    assert groups["outside allocator"] == c["cuda_context"] + c["engine"] + c["activations"] + c["workspace"]
    assert groups["weights"] == c["fp32_model"]


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


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_memcheck_budgets_the_cpu_back_ends_as_host_memory(capsys, backend):
    assert cli_main(["memcheck", "--config", "tiny360", "--precision", "fp32", "--backend", backend]) == 2
    out = capsys.readouterr().out
    assert "host memory" in out and "cuda_context" not in out
    assert cli_main(["memcheck", "--config", "tiny360", "--precision", "fp32", "--backend", backend,
                     "--measure"]) == 2
    assert "runs on the CPU" in capsys.readouterr().err
