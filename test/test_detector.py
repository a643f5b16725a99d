"""Detector: points -> boxes, end to end on real scans with the tiny model (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_data import real_data_dir, real_file

from fastpillars_ros.datasets.kitti import KittiDataset
from fastpillars_ros.detector import STAGES, Detector
from fastpillars_ros.ops.iou import rotated_iou_bev
from fastpillars_ros.pointcloud import read_points
from fastpillars_ros.runtime.cpu_features import amx_bf16


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector("tiny", device="cpu", warmup=False)


@pytest.fixture(scope="module")
def kitti_points() -> np.ndarray:
    return read_points(real_file("kitti/training/velodyne/000000.bin"))


def _assert_valid(det, result, n_points):
    k = len(result)
    assert result.boxes.shape == (k, 7) and result.boxes.dtype == np.float32
    assert result.scores.shape == (k,) and result.labels.shape == (k,) and result.labels.dtype == np.int64
    assert np.isfinite(result.boxes).all() and np.isfinite(result.scores).all()
    assert ((result.scores >= 0) & (result.scores <= 1)).all()
    assert ((result.labels >= 0) & (result.labels < len(det.class_names))).all()
    assert (result.boxes[:, 3:6] > 0).all()
    assert set(STAGES) | {"total"} <= set(result.timings)
    assert result.timings["total"] >= sum(result.timings[s] for s in STAGES) * 0.99
    assert result.stats["num_points"] == n_points
    assert 0 <= result.stats["num_points_in_range"] <= n_points
    assert 0 < result.stats["num_pillars"] <= result.stats["num_points_in_range"]


def test_finds_the_labelled_pedestrian_on_a_real_kitti_scan(detector):
    # KITTI frame 000000 has one labelled object, a pedestrian 8.7 m ahead. A BEV IoU of 0.25 is the
    # loose KITTI threshold for pedestrians; a score of 0.3 is well above the config's publishing threshold.
    frame = KittiDataset(real_data_dir() / "kitti", classes=detector.class_names)[0]
    assert frame.frame_id == "000000" and frame.names == ["pedestrian"]
    result = detector.detect(frame.points)
    _assert_valid(detector, result, len(frame.points))
    pedestrian = detector.class_names.index("pedestrian")
    confident = (result.labels == pedestrian) & (result.scores >= 0.3)
    iou = rotated_iou_bev(result.boxes[confident].astype(np.float64), frame.boxes)
    assert iou.size and iou.max() >= 0.25, f"labelled pedestrian {frame.boxes[0]} not found"


@pytest.mark.parametrize("name,fields_scale", [
    ("pcd_sensorscalibration/p64.pcd", 255.0),         # binary_compressed, intensity 0..255
    ("pcd_nebula/velodyne_vlp16_1673400472138016708.pcd", 255.0),
    ("pcd_fast_gicp/251370668.pcd", 255.0),
])
def test_detects_on_real_scans_of_other_sensors_with_intensity_rescaled(detector, name, fields_scale):
    pts = read_points(real_file(name))
    pts[:, 3] *= detector.intensity_scale / fields_scale
    _assert_valid(detector, detector.detect(pts), len(pts))


def test_same_frame_gives_identical_detections(detector, kitti_points):
    a, b = detector.detect(kitti_points), detector.detect(kitti_points.copy())
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_torch_input_equals_numpy_input(detector, kitti_points):
    a, b = detector.detect(kitti_points), detector.detect(torch.from_numpy(kitti_points))
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_empty_frame_gives_no_detections(detector):
    result = detector.detect(np.zeros((0, 4), dtype=np.float32))
    assert len(result) == 0 and result.boxes.shape == (0, 7)
    assert result.stats["num_pillars"] == 0


def test_points_outside_the_range_are_ignored(detector):
    far = np.full((1000, 4), 500.0, dtype=np.float32)
    result = detector.detect(far)
    assert len(result) == 0 and result.stats["num_points_in_range"] == 0


def test_points_beyond_max_points_are_dropped_deterministically_and_counted(kitti_points):
    det = Detector("tiny", device="cpu", warmup=False, max_points=50_000)
    a, b = det.detect(kitti_points), det.detect(kitti_points)
    assert a.stats["dropped_points"] == len(kitti_points) - 50_000
    assert a.stats["num_points_used"] == 50_000
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_pillars_beyond_max_pillars_are_dropped_and_counted(kitti_points):
    full = Detector("tiny", device="cpu", warmup=False).detect(kitti_points)
    capped = Detector("tiny", device="cpu", warmup=False, max_pillars=500).detect(kitti_points)
    assert capped.stats["num_pillars"] == 500
    assert capped.stats["dropped_pillars"] == full.stats["num_pillars"] - 500


def test_wrong_number_of_columns_is_rejected_with_the_expected_layout(detector):
    with pytest.raises(ValueError, match=r"\(N, 4\).*intensity"):
        detector.detect(np.zeros((10, 3), dtype=np.float32))


def test_per_class_score_threshold_removes_only_that_class(kitti_points):
    det = Detector("tiny", device="cpu", warmup=False, score_threshold=0.0)
    base = det.detect(kitti_points)
    assert len(base) > 0, "random-weight tiny model should produce candidates at threshold 0"
    top = det.class_names[int(np.bincount(base.labels).argmax())]
    det.set_score_threshold({top: 1.0})
    after = det.detect(kitti_points)
    assert top not in {det.class_names[i] for i in after.labels}
    others = base.labels != det.class_names.index(top)
    assert len(after) == int((others & (base.scores >= det.config.decode.score_threshold)).sum())


def test_bad_settings_fail_at_construction_with_the_fix():
    with pytest.raises(ValueError, match=r"fp16.*needs a GPU"):
        Detector("tiny", device="cpu", precision="fp16", warmup=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        Detector("tiny", backend="onnx", warmup=False)
    with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\]"):
        Detector("tiny", score_threshold=1.5, warmup=False)
    with pytest.raises(ValueError, match="unknown classes"):
        Detector("tiny", score_threshold={"truck": 0.3}, warmup=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Detector("tiny", checkpoint="/nonexistent/model.pt", warmup=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_tensorrt_backend_without_a_gpu_says_what_is_missing():
    with pytest.raises(RuntimeError, match=r"TensorRT|CUDA"):
        Detector("tiny", backend="tensorrt", device="cuda", warmup=False)


def test_cpu_auto_backend_follows_the_processor_and_in_fp32_gives_the_torch_boxes(detector, kitti_points):
    assert detector.backend == ("openvino" if amx_bf16() else "onnxruntime")
    fp32 = Detector("tiny", device="cpu", precision="fp32", warmup=False)
    torch_det = Detector("tiny", device="cpu", backend="torch", warmup=False)
    a, b = fp32.detect(kitti_points), torch_det.detect(kitti_points)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_without_a_cpu_engine_auto_uses_torch_and_an_explicit_request_says_what_is_missing(monkeypatch):
    import fastpillars_ros.runtime.onnxruntime_backend as ort_backend
    import fastpillars_ros.runtime.openvino_backend as ov_backend

    monkeypatch.setattr(ort_backend, "onnxruntime_version", lambda: None)
    monkeypatch.setattr(ov_backend, "openvino_version", lambda: None)
    assert Detector("tiny", device="cpu", warmup=False).backend == "torch"
    with pytest.raises(RuntimeError, match="pip install onnxruntime"):
        Detector("tiny", device="cpu", backend="onnxruntime", warmup=False)


def test_onnxruntime_backend_runs_on_the_cpu_when_the_device_is_auto():
    assert Detector("tiny", backend="onnxruntime", warmup=False).device == "cpu"


def test_warm_up_runs_at_construction():
    det = Detector("tiny", device="cpu", warmup=True)
    assert det.warmup_ms is not None and det.warmup_ms > 0


@pytest.mark.gpu
def test_gpu_and_cpu_give_the_same_boxes(kitti_points, tmp_path):
    from fastpillars_ros.model import build_model
    from fastpillars_ros.model.checkpoint import save_checkpoint

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(build_model("tiny"), ckpt)
    cpu = Detector("tiny", ckpt, device="cpu", backend="torch", warmup=False).detect(kitti_points)
    gpu = Detector("tiny", ckpt, device="cuda", backend="torch", warmup=False).detect(kitti_points)
    assert len(cpu) == len(gpu)
    np.testing.assert_allclose(gpu.boxes, cpu.boxes, atol=1e-3)
    np.testing.assert_allclose(gpu.scores, cpu.scores, atol=1e-4)


def test_publishing_is_the_same_as_nms_over_every_candidate_then_the_thresholds():
    # The CPU path drops candidates below the lowest threshold before NMS; a dropped box could only have
    # suppressed boxes scored lower still. Crowded random candidates (a below-threshold pedestrian on top of a
    # cyclist, boxes past the NMS caps) must publish exactly what NMS and the containment suppression over all of
    # them, then the thresholds, do.
    detector = Detector("tiny", device="cpu", warmup=False, nms_containment=0.5)
    from fastpillars_ros.model.head import Candidates

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 700))
        centre = rng.uniform(-6, 6, (n, 2)) if trial % 2 else rng.uniform(-40, 40, (n, 2))
        boxes = np.concatenate([centre, rng.uniform(-2, 0, (n, 1)), rng.uniform(0.5, 4.5, (n, 3)),
                                rng.uniform(-np.pi, np.pi, (n, 1))], axis=1)
        scores = np.sort(rng.uniform(0.1, 1.0, n))[::-1].copy()
        labels = rng.integers(0, 3, n)
        cand = Candidates(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32),
                          torch.tensor(labels), torch.zeros(n, dtype=torch.int64))
        detector.set_score_threshold(dict(zip(detector.class_names, rng.uniform(0.1, 0.9, 3).tolist(), strict=True)))
        thresholds = torch.from_numpy(detector._score_thresholds)
        reference = detector._suppress_contained(detector._nms(cand))
        reference = reference.select(reference.scores >= thresholds[reference.labels])
        published = detector._select(cand)
        assert torch.equal(published.boxes, reference.boxes) and torch.equal(published.labels, reference.labels)
    detector.set_score_threshold(None)


def test_the_default_model_publishes_no_pedestrian_inside_a_stronger_car():
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.model.head import Candidates

    assert load_model_config("tiny360").decode.nms_containment == 0.5  # MODEL_CARD step 5 item 18
    detector = Detector("tiny", device="cpu", warmup=False, nms_containment=0.5, score_threshold=0.3)
    boxes = torch.tensor([[10.0, 0.0, -1.0, 4.5, 1.9, 1.6, 0.0], [11.5, 0.5, -1.0, 0.8, 0.6, 1.7, 0.0],
                          [20.0, 5.0, -1.0, 0.8, 0.6, 1.7, 0.0]])
    cand = Candidates(boxes, torch.tensor([0.8, 0.7, 0.6]), torch.tensor([0, 1, 1]), torch.zeros(3, dtype=torch.int64))
    assert detector._select(cand).boxes[:, 0].tolist() == [10.0, 20.0]  # the pedestrian alone in the open stays
    assert len(Detector("tiny", device="cpu", warmup=False, score_threshold=0.3)._select(cand)) == 3  # tiny: off


def _nms_groups_on_the_host(boxes, valid, iou_threshold, kind="bev", pre_max=None, post_max=None,
                            min_radius=None):
    """:func:`~fastpillars_ros.ops.nms_cuda.nms_groups_cuda`'s documented semantics on CPU tensors (per row: the
    valid prefix, by descending score, greedy NMS with the per-group caps)."""
    from fastpillars_ros.ops import nms_bev

    keep = torch.zeros_like(valid)
    for g in range(boxes.shape[0]):
        count = int(valid[g].sum())
        kept = nms_bev(boxes[g, :count], -torch.arange(count, dtype=torch.float32), iou_threshold, pre_max, post_max)
        keep[g, kept] = True
    return keep


def test_device_selection_publishes_what_the_cpu_selection_does(kitti_points, monkeypatch):
    # The GPU path's order of steps (NMS on the decoder's block, the lowest threshold, containment, the class
    # thresholds), run here on CPU tensors with NMS done on the host: the same boxes as the CPU path.
    from fastpillars_ros.model.head import decode_dense
    from fastpillars_ros.ops import nms_cuda

    monkeypatch.setattr(nms_cuda, "nms_groups_cuda", _nms_groups_on_the_host)
    det = Detector("tiny360", device="cpu", backend="torch", precision="fp32", warmup=False, score_threshold=0.2)
    assert det.nms_kind == "bev" and det.nms_containment == 0.5
    cfg = det.config
    from fastpillars_ros.ops import decorate, pillarize

    p = pillarize(kitti_points, cfg.pc_range, cfg.pillar_size)
    feats = torch.from_numpy(decorate(kitti_points, p, cfg.pc_range, cfg.pillar_size))
    with torch.no_grad():
        canvas = det.model.encode(feats, torch.from_numpy(p.point_pillar), torch.from_numpy(p.coords))
        dense = decode_dense(det._dense.forward_dense(canvas), cfg)
    on_device, on_cpu = det._select_on_device(dense), det._select(dense.compact()[0])
    det.nms_containment = 0.0
    assert len(on_cpu) < len(det._select(dense.compact()[0]))  # the containment step has work in this frame
    assert torch.equal(on_device.boxes, on_cpu.boxes) and torch.equal(on_device.labels, on_cpu.labels)


def test_describe_says_whether_the_cpu_kernels_are_compiled(monkeypatch):
    from fastpillars_ros.ops import mape_cpu, pillarize_cpu

    det = Detector("tiny", device="cpu", warmup=False)
    if mape_cpu.kernel() is None or pillarize_cpu.kernel() is None:
        pytest.skip("no C compiler: the CPU kernels are not built")
    assert "CPU kernels compiled" in det.describe()
    monkeypatch.setenv("FASTPILLARS_NATIVE", "0")
    for kernel in (mape_cpu.kernel, pillarize_cpu.kernel):
        kernel.cache_clear()
    try:
        assert "CPU kernels pillarize and MAPE in numpy/torch" in det.describe()
        assert "install a C compiler" in det.cpu_kernels
    finally:
        monkeypatch.delenv("FASTPILLARS_NATIVE")
        for kernel in (mape_cpu.kernel, pillarize_cpu.kernel):
            kernel.cache_clear()
