"""OpenVINO CPU back end: bf16 gives fp32's boxes on real scans, INT8 runs the engine cache's quantised graph,
``auto`` picks what the processor runs natively, and a missing package or a wrong choice is said plainly."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from test_quantize import REAL_SCANS, _frames

from fastpillars_ros.detector import Detector, default_checkpoint
from fastpillars_ros.runtime import openvino_backend
from fastpillars_ros.tools.regression import compare

# bf16 vs fp32, tiny on KITTI 000000/000001 (measured: 165/166 boxes above 0.2 matched both ways, largest score
# difference 0.005; tiny360 34/34, 0.005): bf16 keeps 8 bits of mantissa, far finer than the score noise that
# moves a box across a threshold, so the check is much tighter than INT8's (test_quantize.py).
BF16_CONFIDENT = 0.2
BF16_MIN_MATCHED = 0.97
BF16_MAX_SCORE_DIFF = 0.02


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def fp32() -> Detector:
    return Detector("tiny", device="cpu", backend="onnxruntime", precision="fp32", warmup=False)


@pytest.fixture(scope="module")
def bf16() -> Detector:
    return Detector("tiny", device="cpu", backend="openvino", precision="bf16", warmup=False)


def test_bf16_boxes_match_fp32_on_real_scans(bf16, fp32):
    a, b = _frames(bf16), _frames(fp32)
    for received, golden in ((a, b), (b, a)):
        report = compare(received, golden, iou_threshold=0.5, score_threshold=BF16_CONFIDENT)
        assert report.golden_boxes >= 50 * len(REAL_SCANS), "too few boxes to compare"
        assert report.boxes_matched >= BF16_MIN_MATCHED * report.golden_boxes, report.format()
        assert report.max_score_diff <= BF16_MAX_SCORE_DIFF, report.format()


def test_fp32_through_openvino_gives_the_onnxruntime_boxes(fp32):
    det = Detector("tiny", device="cpu", backend="openvino", precision="fp32", warmup=False)
    assert det._dense.inference_precision == "f32"
    report = compare(_frames(det), _frames(fp32), iou_threshold=0.9, score_threshold=BF16_CONFIDENT)
    assert report.boxes_matched == report.golden_boxes > 0 and report.max_score_diff < 1e-3, report.format()


def test_openvino_int8_runs_the_graph_quantised_for_onnxruntime_from_the_same_cache(cache_dir):
    ort = Detector("tiny", device="cpu", backend="onnxruntime", precision="int8", engine_cache_dir=cache_dir,
                   warmup=False)
    ov = Detector("tiny", device="cpu", backend="openvino", precision="int8", engine_cache_dir=cache_dir,
                  warmup=False)
    assert ort._dense.built and not ov._dense.built
    assert ov._dense.key == ort._dense.key


def test_a_corrupt_cached_int8_graph_is_rebuilt_by_openvino_too(cache_dir, tmp_path):
    Detector("tiny", device="cpu", backend="openvino", precision="int8", engine_cache_dir=tmp_path, warmup=False)
    (engine,) = tmp_path.glob("*_int8_*.engine")
    engine.write_bytes(b"not an onnx model")
    again = Detector("tiny", device="cpu", backend="openvino", precision="int8", engine_cache_dir=tmp_path,
                     warmup=False)
    assert again._dense.built and engine.read_bytes() != b"not an onnx model"


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "int8")])
def test_auto_precision_with_openvino_is_bf16_where_the_processor_has_it_else_int8(monkeypatch, native, expected):
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: native)
    det = Detector("tiny", device="cpu", backend="openvino", warmup=False)
    assert (det.backend, det.precision) == ("openvino", expected)


def test_bf16_computes_in_bf16_where_the_processor_has_it(bf16):
    assert bf16._dense.inference_precision == ("bf16" if openvino_backend.native_bf16() else "f32")


def test_bf16_needs_the_openvino_back_end():
    with pytest.raises(ValueError, match=r"bf16.*openvino"):
        Detector("tiny", device="cpu", backend="onnxruntime", precision="bf16", warmup=False)


def test_bf16_is_refused_on_the_gpu_with_the_choices_that_work(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(ValueError, match=r"precision 'bf16' runs on the CPU.*use device 'cpu'"):
        Detector("tiny", device="cuda", precision="bf16", warmup=False)


def test_openvino_runs_on_the_cpu_when_the_device_is_auto():
    assert Detector("tiny", backend="openvino", warmup=False).device == "cpu"


def test_auto_prefers_onnxruntime_and_takes_openvino_where_onnxruntime_is_missing(monkeypatch):
    from fastpillars_ros.runtime import memory, onnxruntime_backend

    monkeypatch.setattr(memory, "amx_bf16", lambda: False)
    assert Detector("tiny", device="cpu", warmup=False).backend == "onnxruntime"
    monkeypatch.setattr(onnxruntime_backend, "onnxruntime_version", lambda: None)
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: True)
    det = Detector("tiny", device="cpu", warmup=False)
    assert (det.backend, det.precision) == ("openvino", "bf16")


def test_auto_on_a_processor_with_amx_is_openvino_bf16_and_onnxruntime_int8_without_openvino(monkeypatch):
    from fastpillars_ros.runtime import memory

    monkeypatch.setattr(memory, "amx_bf16", lambda: True)
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: True)  # AMX has native bf16
    det = Detector("tiny", device="cpu", warmup=False)
    assert (det.backend, det.precision) == ("openvino", "bf16")
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: None)
    det = Detector("tiny", device="cpu", warmup=False)
    assert (det.backend, det.precision) == ("onnxruntime", "int8")


@pytest.fixture
def weights_kept_out_of_int8(tmp_path):
    from fastpillars_ros.model import update_checkpoint_meta

    path = tmp_path / "tiny_no_int8.pt"
    shutil.copy(default_checkpoint("tiny"), path)
    update_checkpoint_meta(path, auto_int8=False)
    return path


@pytest.fixture
def processor(monkeypatch):
    """Pretend the processor has or lacks AMX and bf16 units, wherever the back-end choice reads them."""
    from fastpillars_ros import detector
    from fastpillars_ros.runtime import memory

    def pretend(*, amx: bool = False, bf16: bool = False) -> None:
        monkeypatch.setattr(memory, "amx_bf16", lambda: amx)
        monkeypatch.setattr(memory, "bf16_units", lambda: bf16)
        monkeypatch.setattr(detector, "bf16_units", lambda: bf16)

    return pretend


def test_auto_runs_weights_kept_out_of_int8_in_bf16_where_native(monkeypatch, processor, weights_kept_out_of_int8):
    processor(bf16=True)
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: True)
    det = Detector("tiny", weights_kept_out_of_int8, device="cpu", warmup=False)
    assert (det.backend, det.precision) == ("openvino", "bf16")


def test_auto_runs_weights_kept_out_of_int8_in_fp32_without_bf16(monkeypatch, processor, weights_kept_out_of_int8,
                                                                   caplog):
    processor(bf16=False)
    with caplog.at_level(logging.INFO, logger="fastpillars_ros.detector"):
        det = Detector("tiny", weights_kept_out_of_int8, device="cpu", warmup=False)
    assert (det.backend, det.precision) == ("onnxruntime", "fp32")
    assert "not int8: these weights" in caplog.text
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: False)  # OpenVINO alone, without native bf16
    det = Detector("tiny", weights_kept_out_of_int8, device="cpu", backend="openvino", warmup=False)
    assert det.precision == "fp32"


def test_int8_asked_for_by_name_still_runs_weights_kept_out_of_it_with_a_warning(weights_kept_out_of_int8, caplog):
    with caplog.at_level(logging.WARNING, logger="fastpillars_ros.detector"):
        det = Detector("tiny", weights_kept_out_of_int8, device="cpu", backend="onnxruntime", precision="int8",
                       warmup=False)
    assert det.precision == "int8"
    assert "were not accepted in INT8" in caplog.text


def test_without_openvino_an_explicit_request_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: None)
    with pytest.raises(RuntimeError, match="pip install openvino"):
        Detector("tiny", device="cpu", backend="openvino", warmup=False)


def test_bf16_without_native_bf16_warns_that_int8_is_the_fast_choice(monkeypatch, caplog):
    import openvino

    real_compile = openvino.Core.compile_model

    class NoNativeBf16:
        """A compiled model as OpenVINO gives it on a processor without bf16: computing in f32."""

        def __init__(self, compiled):
            self._compiled = compiled

        def get_property(self, name):
            return openvino.Type.f32 if name == "INFERENCE_PRECISION_HINT" else self._compiled.get_property(name)

        def __getattr__(self, name):
            return getattr(self._compiled, name)

    monkeypatch.setattr(openvino.Core, "compile_model", lambda *a, **k: NoNativeBf16(real_compile(*a, **k)))
    with caplog.at_level("WARNING"):
        det = Detector("tiny", device="cpu", backend="openvino", precision="bf16", warmup=False)
    assert det._dense.inference_precision == "f32"
    assert "no native bf16" in caplog.text and "'int8' is the fast choice" in caplog.text


def test_bf16_with_the_auto_back_end_runs_on_openvino():
    det = Detector("tiny", precision="bf16", warmup=False)
    assert (det.device, det.backend, det.precision) == ("cpu", "openvino", "bf16")


def test_without_openvino_a_bf16_processor_is_told_how_to_run_weights_kept_out_of_int8_faster(
        monkeypatch, processor, weights_kept_out_of_int8, caplog):
    processor(bf16=True)
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: None)
    with caplog.at_level(logging.WARNING, logger="fastpillars_ros.detector"):
        det = Detector("tiny", weights_kept_out_of_int8, device="cpu", warmup=False)
    assert (det.backend, det.precision) == ("onnxruntime", "fp32")
    assert "pip install openvino" in caplog.text
