"""regression: received vs golden detections (BEV IoU >= 0.9, same class, no extras) and golden files."""

from __future__ import annotations

import numpy as np
import pytest

from fastpillars_ros import bags
from fastpillars_ros.tools.regression import (
    FrameDetections,
    compare,
    detections_from_bag,
    golden_from_bag,
    load_detections,
    save_detections,
)

BOXES = np.array([[10.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.3],
                  [20.0, -5.0, -1.0, 0.8, 0.7, 1.7, -1.0],
                  [30.0, 4.0, -1.0, 1.8, 0.6, 1.7, 2.0]])
NAMES = ["car", "pedestrian", "cyclist"]


def _golden() -> list[FrameDetections]:
    return [FrameDetections(0, 100, BOXES, [0.9, 0.6, 0.4], NAMES, "velodyne"),
            FrameDetections(1, 200, BOXES[:1] + np.array([1, 0, 0, 0, 0, 0, 0]), [0.8], ["car"], "velodyne")]


def test_compare_passes_identical_detections():
    report = compare(_golden(), _golden())
    assert report.ok and bool(report)
    assert (report.frames_compared, report.boxes_matched, report.golden_boxes) == (2, 4, 4)
    assert "PASSED" in str(report) and report.min_iou == pytest.approx(1.0)


def test_compare_passes_small_numeric_differences_in_other_order():
    received = _golden()
    f = received[0]
    nudged = f.boxes + np.array([0.02, -0.02, 0, 0, 0, 0, 0.005])
    received[0] = FrameDetections(0, 100, nudged[::-1], f.scores[::-1] + 0.001, f.names[::-1])
    report = compare(received, _golden())
    assert report.ok, str(report)
    assert report.max_score_diff == pytest.approx(0.001)


def test_compare_fails_for_missing_box_with_clear_report():
    received = _golden()
    f = received[0]
    received[0] = FrameDetections(0, 100, f.boxes[[0, 2]], f.scores[[0, 2]], [f.names[0], f.names[2]])
    report = compare(received, _golden())
    assert not report.ok and len(report.missing) == 1
    text = str(report)
    assert "FAILED" in text and "missing boxes (1)" in text
    assert "frame 0 (stamp 100): golden pedestrian 0.600 at (20.00, -5.00, -1.00)" in text


def test_compare_fails_for_class_change():
    received = _golden()
    f = received[0]
    received[0] = FrameDetections(0, 100, f.boxes, f.scores, ["car", "cyclist", "cyclist"])
    report = compare(received, _golden())
    assert not report.ok and not report.missing and not report.extra
    assert len(report.class_changes) == 1
    assert "golden pedestrian 0.600" in report.class_changes[0] and "received as cyclist" in report.class_changes[0]


def test_compare_fails_for_extra_box_above_threshold_only():
    received = _golden()
    f = received[1]
    extra = np.array([[5.0, 5.0, -1.0, 4.0, 1.8, 1.5, 0.0], [40.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.0]])
    received[1] = FrameDetections(1, 200, np.vstack([f.boxes, extra]), [0.8, 0.5, 0.05], ["car", "car", "car"])
    report = compare(received, _golden(), score_threshold=0.1)
    assert not report.ok and len(report.extra) == 1
    assert "frame 1 (stamp 200): received car 0.500 at (5.00, 5.00, -1.00)" in report.extra[0]


def test_compare_fails_for_shifted_box_and_missing_frame():
    received = _golden()[:1]
    f = received[0]
    moved = f.boxes.copy()
    moved[0, 0] += 0.5  # the car moved 0.5 m along x: IoU 0.68 < 0.9
    received[0] = FrameDetections(0, 100, moved, f.scores, f.names)
    report = compare(received, _golden())
    assert len(report.missing_frames) == 1 and "frame 1 (stamp 200)" in report.missing_frames[0]
    assert len(report.missing) == 1 and "best same-class IoU 0.678" in report.missing[0]
    assert len(report.extra) == 1


def test_detections_json_round_trip(tmp_path):
    path = save_detections(_golden(), tmp_path / "g.json", class_names=NAMES, meta={"model": "tiny"})
    loaded = load_detections(path)
    assert compare(loaded, _golden()).ok and compare(_golden(), loaded).ok
    assert [f.frame_id for f in loaded] == ["velodyne", "velodyne"]
    np.testing.assert_array_equal(loaded[0].boxes, BOXES)


def test_detections_from_recorded_bag(tmp_path):
    path = tmp_path / "rec.mcap"
    with bags.open_writer(path) as bag:
        for f in _golden()[::-1]:  # received out of order
            bag.write("/detections", bags.DETECTION3DARRAY, 5 + f.stamp_ns,
                      bags.detections_message(f.boxes, f.scores, f.names, f.stamp_ns, f.frame_id))
    frames = detections_from_bag(path)
    assert [f.stamp_ns for f in frames] == [100, 200]
    assert compare(frames, _golden()).ok


class _FixedDetector:
    """Stands in for the Detector: one car 5 m ahead of the first point, score 0.5."""

    CLASSES = ("car", "pedestrian", "cyclist")

    def __init__(self):
        self.class_names = list(self.CLASSES)
        self.point_features = ["x", "y", "z", "intensity"]
        self.intensity_scale = 1.0
        self.seen = []

    def detect(self, points):
        from fastpillars_ros.detector import Detections

        self.seen.append(points.copy())
        box = np.array([[points[0, 0] + 5, points[0, 1], -1.0, 4.0, 1.8, 1.5, 0.0]], np.float32)
        return Detections(box, np.array([0.5], np.float32), np.array([0]))


def test_golden_from_bag_runs_the_detector_over_every_cloud(tmp_path):
    detector = _FixedDetector()
    frames, names = golden_from_bag(bags.SAMPLE_BAG, detector=detector, max_frames=3)
    assert names == list(_FixedDetector.CLASSES) and len(frames) == 3 and len(detector.seen) == 3
    truth = bags.read_detections(bags.SAMPLE_BAG)[:3]
    assert [f.stamp_ns for f in frames] == [t.stamp_ns for t in truth]
    clouds = list(bags.read_clouds(bags.SAMPLE_BAG, frames=[0]))
    assert detector.seen[0].shape == clouds[0].points.shape
    assert all(f.names == ["car"] and f.frame_id == "velodyne" for f in frames)
    path = save_detections(frames, tmp_path / "golden.json", class_names=names)
    assert compare(load_detections(path), frames).ok


@pytest.mark.slow
def test_golden_from_bag_with_the_tiny_detector_is_deterministic():
    import torch

    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the same (random until a checkpoint ships) weights for both detectors
        runs.append(golden_from_bag(bags.SAMPLE_BAG, overrides={"device": "cpu", "warmup": False},
                                    max_frames=1))
    (frames, names), (again, _) = runs
    assert names == ["car", "pedestrian", "cyclist"] and len(frames) == 1
    report = compare(again, frames)
    assert report.ok and report.boxes_matched == report.golden_boxes, str(report)


def test_regression_check_command_exit_codes(tmp_path, capsys):
    import argparse

    from fastpillars_ros.tools.regression import Check

    golden = save_detections(_golden(), tmp_path / "g.json")
    broken = _golden()
    broken[0] = FrameDetections(0, 100, BOXES[:2], [0.9, 0.6], NAMES[:2])
    received = save_detections(broken, tmp_path / "r.json")
    parser = argparse.ArgumentParser()
    Check.add_arguments(parser)
    assert Check.run(parser.parse_args(["--golden", str(golden), "--received", str(golden)])) == 0
    assert Check.run(parser.parse_args(["--golden", str(golden), "--received", str(received)])) == 1
    assert "golden cyclist 0.400" in capsys.readouterr().out
