"""Evaluation (fastpillars_ros.evaluation) and the ``eval`` command (fastpillars_ros.tools.eval)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fastpillars_ros.boxes import KittiCalib
from fastpillars_ros.datasets.kitti import format_label_line, labels_from_lidar_boxes
from fastpillars_ros.detections_file import FrameDetections, load_detections, save_detections
from fastpillars_ros.evaluation import FrameBoxes, evaluate, plot_pr_curves
from fastpillars_ros.ops.iou import iou_3d, rotated_iou_bev
from fastpillars_ros.tools import eval as eval_tool

CLASSES = ["car", "pedestrian", "cyclist"]
CAR, PED = 0, 1


def car(x: float, y: float = 0.0, z: float = -1.0, yaw: float = 0.0) -> list[float]:
    return [x, y, z, 4.0, 2.0, 1.5, yaw]


def ped(x: float, y: float = 0.0) -> list[float]:
    return [x, y, -0.9, 0.8, 0.6, 1.7, 0.0]


def gt(boxes: list[list[float]], labels: list[int], ignore: list[bool] | None = None) -> FrameBoxes:
    return FrameBoxes(np.array(boxes, dtype=np.float64).reshape(-1, 7), np.array(labels, dtype=np.int64),
                      ignore=None if ignore is None else np.array(ignore))


def det(boxes: list[list[float]], labels: list[int], scores: list[float]) -> FrameBoxes:
    return FrameBoxes(np.array(boxes, dtype=np.float64).reshape(-1, 7), np.array(labels, dtype=np.int64),
                      scores=np.array(scores, dtype=np.float64))


def four_cars() -> list[list[float]]:
    return [car(10, 0), car(20, 5, yaw=0.4), car(30, -6, yaw=-1.2), car(15, 12, yaw=2.5)]


def test_perfect_detections_give_100_ap_everywhere():
    g = [gt(four_cars(), [CAR] * 4), gt([ped(8, 3), ped(12, -4)], [PED, PED])]
    p = [det(four_cars(), [CAR] * 4, [0.9, 0.8, 0.7, 0.6]), det([ped(8, 3), ped(12, -4)], [PED, PED], [0.5, 0.4])]
    res = evaluate(p, g, CLASSES)
    for name in ("car", "pedestrian"):
        for thr in res.iou_thresholds[name]:
            for metric in ("bev", "3d"):
                assert res.ap(name, metric, thr) == pytest.approx(100.0)
                assert res.get(name, metric, thr).max_recall == 1.0
    assert math.isnan(res.ap("cyclist"))  # no ground truth: undefined


def test_no_detections_give_0_ap():
    res = evaluate([det([], [], [])], [gt(four_cars(), [CAR] * 4)], CLASSES)
    assert res.ap("car", "bev", 0.5) == 0.0
    assert res.get("car", "3d").num_gt == 4 and res.get("car", "3d").max_recall == 0.0


def test_shift_below_threshold_is_a_miss():
    # A 4 m x 2 m car shifted 1 m along its length overlaps 3 x 2 of 8 + 8 - 6: IoU 0.6 in BEV and 3D.
    shifted = [car(11, 0)]
    assert float(rotated_iou_bev(np.array(shifted), np.array([car(10, 0)]))[0, 0]) == pytest.approx(0.6)
    assert float(iou_3d(np.array(shifted), np.array([car(10, 0)]))[0, 0]) == pytest.approx(0.6)
    res = evaluate([det(shifted, [CAR], [0.9])], [gt([car(10, 0)], [CAR])], CLASSES)
    assert res.ap("car", "3d", 0.7) == 0.0 and res.ap("car", "bev", 0.7) == 0.0
    assert res.get("car", "3d", 0.7).num_fp == 1
    assert res.ap("car", "3d", 0.5) == pytest.approx(100.0)


def test_false_positive_above_all_true_positives_costs_the_hand_computed_ap():
    # FP first (precision 0 at recall 0), then TP k of 4 at precision k / (k + 1): every recall level's
    # best precision at or beyond it is 4/5, so AP = 80.
    p = det([car(50, 40), *four_cars()], [CAR] * 5, [0.95, 0.9, 0.8, 0.7, 0.6])
    res = evaluate([p], [gt(four_cars(), [CAR] * 4)], CLASSES)
    assert res.ap("car", "3d", 0.7) == pytest.approx(80.0)
    assert res.get("car", "3d", 0.7).num_fp == 1


def test_false_positive_between_true_positives_interpolates_r40():
    # TP (r .5, p 1), FP (r .5, p .5), TP (r 1, p 2/3): levels 1..20 get 1, levels 21..40 get 2/3.
    p = det([car(10, 0), car(50, 40), car(20, 5)], [CAR] * 3, [0.9, 0.8, 0.7])
    res = evaluate([p], [gt([car(10, 0), car(20, 5)], [CAR, CAR])], CLASSES)
    assert res.ap("car", "bev", 0.7) == pytest.approx((20 * 1.0 + 20 * 2.0 / 3.0) / 40 * 100)


def test_duplicate_detections_are_false_positives():
    p = det([car(10, 0), car(10.05, 0), car(20, 5)], [CAR] * 3, [0.9, 0.8, 0.7])
    res = evaluate([p], [gt([car(10, 0), car(20, 5)], [CAR, CAR])], CLASSES)
    m = res.get("car", "3d", 0.7)
    assert (m.num_tp, m.num_fp) == (2, 1)
    assert m.ap == pytest.approx((20 * 1.0 + 20 * 2.0 / 3.0) / 40 * 100)


def test_ignored_ground_truth_is_neither_miss_nor_false_positive():
    g = gt([car(10, 0), car(20, 5)], [CAR, CAR], ignore=[False, True])
    with_det = evaluate([det([car(10, 0), car(20, 5)], [CAR, CAR], [0.5, 0.9])], [g], CLASSES)
    without = evaluate([det([car(10, 0)], [CAR], [0.5])], [g], CLASSES)
    for res in (with_det, without):
        m = res.get("car", "3d", 0.7)
        assert (m.num_gt, m.num_ignored_gt, m.num_det, m.num_fp) == (1, 1, 1, 0)
        assert m.ap == pytest.approx(100.0) and m.max_recall == 1.0


def test_classes_are_matched_separately():
    # A car-labelled detection exactly on a pedestrian box does not find it.
    res = evaluate([det([ped(8, 3)], [CAR], [0.9])], [gt([ped(8, 3)], [PED])], CLASSES)
    assert res.get("car", "3d").num_fp == 1 and math.isnan(res.ap("car"))
    assert res.ap("pedestrian", "bev", 0.25) == 0.0 and res.get("pedestrian", "bev", 0.25).num_gt == 1


def test_max_range_keeps_only_nearby_boxes():
    g = gt([car(30, 0), car(0, -60)], [CAR, CAR])
    p = det([car(30, 0), car(45, 30)], [CAR, CAR], [0.5, 0.9])  # the 2nd is a far false positive
    everywhere = evaluate([p], [g], CLASSES).get("car", "3d")
    near = evaluate([p], [g], CLASSES, max_range=40.0).get("car", "3d")
    assert (everywhere.num_gt, everywhere.num_fp, everywhere.max_recall) == (2, 1, 0.5)
    assert (near.num_gt, near.num_fp, near.max_recall, near.ap) == (1, 0, 1.0, pytest.approx(100.0))


def test_bev_and_3d_differ_when_z_is_off():
    # Raised by half its height: vertical overlap 0.75 of 1.5, 3D IoU = 6 / (12 + 12 - 6) = 1/3.
    p = det([car(10, 0, z=-0.25)], [CAR], [0.9])
    res = evaluate([p], [gt([car(10, 0)], [CAR])], CLASSES)
    assert res.ap("car", "bev", 0.7) == pytest.approx(100.0)
    assert res.ap("car", "3d", 0.7) == 0.0 and res.ap("car", "3d", 0.5) == 0.0


def test_tied_scores_do_not_depend_on_order():
    boxes = [car(10, 0), car(50, 40), car(20, 5)]
    g = [gt([car(10, 0), car(20, 5)], [CAR, CAR])]
    a = evaluate([det(boxes, [CAR] * 3, [0.5] * 3)], g, CLASSES).ap("car", "3d")
    b = evaluate([det(boxes[::-1], [CAR] * 3, [0.5] * 3)], g, CLASSES).ap("car", "3d")
    assert a == b == pytest.approx(100 * 2 / 3)


def _half_right_frames(n: int) -> tuple[list[FrameBoxes], list[FrameBoxes]]:
    """n frames of one car each; every second frame's detection is 30 m off (a miss plus a false positive)."""
    g = [gt([car(10, 0)], [CAR]) for _ in range(n)]
    p = [det([car(10 if i % 2 == 0 else 40, 0)], [CAR], [0.9 - 0.01 * i]) for i in range(n)]
    return p, g


def test_ap_interval_holds_the_ap_and_narrows_with_more_frames():
    few = evaluate(*_half_right_frames(8), CLASSES).get("car", "bev", 0.7)
    many = evaluate(*_half_right_frames(80), CLASSES).get("car", "bev", 0.7)
    for m in (few, many):
        lo, hi = m.ap_interval()
        assert lo < m.ap < hi
    assert np.diff(many.ap_interval())[0] < 0.6 * np.diff(few.ap_interval())[0]


def test_ap_interval_is_the_ap_itself_when_every_frame_is_alike():
    frames = [gt(four_cars(), [CAR] * 4) for _ in range(5)]
    p = [det([car(50, 40), *four_cars()], [CAR] * 5, [0.95, 0.9, 0.8, 0.7, 0.6]) for _ in range(5)]
    m = evaluate(p, frames, CLASSES).get("car", "3d", 0.7)
    assert m.ap_interval() == pytest.approx((m.ap, m.ap))


def test_ap_interval_is_nan_without_ground_truth_and_repeatable_with_its_seed():
    p, g = _half_right_frames(8)
    res = evaluate(p, g, CLASSES)
    assert all(math.isnan(v) for v in res.get("pedestrian", "bev", 0.5).ap_interval())
    m = res.get("car", "bev", 0.7)
    assert m.ap_interval(seed=3) == m.ap_interval(seed=3)


def test_to_dict_is_json_and_table_lists_every_class():
    res = evaluate([det(four_cars(), [CAR] * 4, [0.9] * 4)], [gt(four_cars(), [CAR] * 4)], CLASSES,
                   iou_thresholds={"car": 0.6})
    d = json.loads(json.dumps(res.to_dict()))
    assert d["iou_thresholds"]["car"] == [0.6]
    assert {r["class"] for r in d["results"]} == set(CLASSES)
    table = res.format_table()
    assert all(c in table for c in CLASSES) and "100.00" in table


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        evaluate([det([car(10)], [5], [0.9])], [gt([], [])], CLASSES)


def test_plot_writes_a_png(tmp_path):
    res = evaluate([det([car(10, 0), car(50, 40)], [CAR, CAR], [0.9, 0.8])], [gt([car(10, 0)], [CAR])], CLASSES)
    out = tmp_path / "pr.png"
    plot_pr_curves(res, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ---------------------------------------------------------------------------------------------------------
# The command, on a small KITTI-format folder written here


def _calib() -> KittiCalib:
    # LiDAR (x forward, y left, z up) -> camera (x right, y down, z forward), camera 0.3 m below the LiDAR.
    tr = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.3], [1.0, 0.0, 0.0, 0.0]])
    p2 = np.array([[721.5, 0.0, 609.6, 44.9], [0.0, 721.5, 172.9, 0.2], [0.0, 0.0, 1.0, 0.003]])
    return KittiCalib(tr_velo_to_cam=tr, p=[p2, p2, p2, p2])


FRAMES = {"000000": [car(10, 0), car(20, 5, yaw=0.4)], "000001": [car(15, -3, yaw=1.0), car(25, 2)]}


def _write_kitti(root: Path, van: list[float] | None = None) -> KittiCalib:
    calib = _calib()
    for sub in ("velodyne", "label_2", "calib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for fid, boxes in FRAMES.items():
        np.zeros((10, 4), dtype=np.float32).tofile(root / "velodyne" / f"{fid}.bin")
        (root / "calib" / f"{fid}.txt").write_text(calib.to_text())
        names, all_boxes = ["Car"] * len(boxes), list(boxes)
        if van is not None and fid == "000000":
            names.append("Van")
            all_boxes.append(van)
        objs = labels_from_lidar_boxes(names, np.array(all_boxes), calib)
        (root / "label_2" / f"{fid}.txt").write_text("\n".join(format_label_line(o) for o in objs) + "\n")
    return calib


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    eval_tool.add_arguments(parser)
    return eval_tool.run(parser.parse_args(argv))


def test_command_evaluates_json_detections(tmp_path, capsys):
    _write_kitti(tmp_path / "kitti")
    # Frame 0 detected perfectly, frame 1 absent from the file (no detections): recall 1/2, AP 50.
    save_detections([FrameDetections(0, 0, FRAMES["000000"], [0.9, 0.8], ["car", "car"], sample="000000")],
                    tmp_path / "dets.json")
    rc = _run(["--data", str(tmp_path / "kitti"), "--detections", str(tmp_path / "dets.json"), "--no-progress",
               "--out", str(tmp_path / "report.json")])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    car_3d = next(r for r in report["results"] if (r["class"], r["metric"], r["iou_threshold"]) == ("car", "3d", 0.7))
    assert car_3d["num_gt"] == 4 and car_3d["num_tp"] == 2 and car_3d["ap"] == pytest.approx(50.0)
    assert "car" in capsys.readouterr().out


def test_command_reads_kitti_result_files_and_ignores_vans(tmp_path):
    van = car(35, -8, yaw=0.2)
    calib = _write_kitti(tmp_path / "kitti", van=van)
    results = tmp_path / "results"
    results.mkdir()
    for fid, boxes in FRAMES.items():  # every car and (in frame 0) the van, as KITTI result lines
        objs = labels_from_lidar_boxes(["Car"] * (len(boxes) + 1), np.array([*boxes, van]), calib)
        for o, s in zip(objs, [0.9, 0.8, 0.7], strict=True):
            o.score = s
        (results / f"{fid}.txt").write_text("\n".join(format_label_line(o) for o in objs) + "\n")
    rc = _run(["--data", str(tmp_path / "kitti"), "--detections", str(results), "--no-progress",
               "--out", str(tmp_path / "report.json")])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    car_3d = next(r for r in report["results"] if (r["class"], r["metric"], r["iou_threshold"]) == ("car", "3d", 0.7))
    # The frame-0 detection on the van is absorbed; the one in frame 1 (no van there) is a false positive.
    assert (car_3d["num_gt"], car_3d["num_ignored_gt"], car_3d["num_tp"], car_3d["num_fp"]) == (4, 1, 4, 1)


def test_command_runs_the_detector_and_saves_its_detections(tmp_path, monkeypatch):
    import sys
    import types

    seen = []

    class FakeDetector:  # same answer every frame: frame 0's two cars and a truck (not evaluated)
        class_names = ("truck", "car")
        point_features = ("x", "y", "z", "intensity")
        intensity_scale = 255.0

        def __init__(self, *args, **kwargs):
            pass

        def detect(self, points):
            seen.append(points.shape)
            boxes = np.array([*FRAMES["000000"], car(40, 40)], dtype=np.float32)
            return types.SimpleNamespace(boxes=boxes, scores=np.array([0.9, 0.8, 0.95], np.float32),
                                         labels=np.array([1, 1, 0]))

    monkeypatch.setitem(sys.modules, "fastpillars_ros.detector", types.SimpleNamespace(Detector=FakeDetector))
    _write_kitti(tmp_path / "kitti")
    rc = _run(["--data", str(tmp_path / "kitti"), "--config", "tiny", "--no-progress", "--classes", "car",
               "--whole-scene", "--save-detections", str(tmp_path / "dets.json"),
               "--out", str(tmp_path / "report.json")])
    assert rc == 0 and seen == [(10, 4), (10, 4)]
    saved = {f.sample: f for f in load_detections(tmp_path / "dets.json")}
    assert saved["000001"].names == ["car", "car"] and saved["000001"].index == 1
    report = json.loads((tmp_path / "report.json").read_text())
    # Score 0.9: a TP (frame 0) and an FP (frame 1) tie -> (recall .25, precision .5); 0.8 likewise -> (.5, .5).
    assert report["results"][0]["ap"] == pytest.approx(25.0)


def test_saved_detections_are_read_back_by_eval_and_viz(tmp_path, monkeypatch):
    import sys
    import types

    from fastpillars_ros.tools import viz

    class FakeDetector:
        class_names, point_features, intensity_scale = ("car",), ("x", "y", "z", "intensity"), 1.0
        config = types.SimpleNamespace(pc_range=(-80, -80, -3, 80, 80, 1))

        def __init__(self, *args, **kwargs):
            self.calls = 0

        def detect(self, points):
            self.calls += 1
            boxes = np.array(FRAMES[f"{self.calls - 1:06d}"], dtype=np.float32)
            return types.SimpleNamespace(boxes=boxes, scores=np.full(len(boxes), 0.9, np.float32),
                                         labels=np.zeros(len(boxes), np.int64))

    monkeypatch.setitem(sys.modules, "fastpillars_ros.detector", types.SimpleNamespace(Detector=FakeDetector))
    _write_kitti(tmp_path / "kitti")
    saved = tmp_path / "d.json"
    assert _run(["--data", str(tmp_path / "kitti"), "--config", "tiny", "--no-progress", "--classes", "car",
                 "--save-detections", str(saved), "--out", str(tmp_path / "a.json")]) == 0
    # eval reads its own file back with the same result ...
    assert _run(["--data", str(tmp_path / "kitti"), "--detections", str(saved), "--no-progress", "--classes", "car",
                 "--out", str(tmp_path / "b.json")]) == 0
    first, second = (json.loads((tmp_path / n).read_text())["results"] for n in ("a.json", "b.json"))
    assert first[0]["ap"] == second[0]["ap"] == pytest.approx(100.0)
    # ... and viz draws the boxes of the frame it shows (by KITTI frame id).
    view = viz.load_view(tmp_path / "kitti", "000001", detections=saved)
    np.testing.assert_allclose(view.det_boxes, FRAMES["000001"], atol=1e-5)
    assert view.det_names == ["car"] * len(FRAMES["000001"])


def test_command_camera_fov_drops_detections_behind_the_camera(tmp_path):
    _write_kitti(tmp_path / "kitti")
    save_detections([FrameDetections(0, 0, [FRAMES["000000"][0], car(-10, 0)], [0.9, 0.95], ["car", "car"],
                                     sample="000000")], tmp_path / "dets.json")
    fps = []
    for extra in ([], ["--camera-fov"]):
        assert _run(["--data", str(tmp_path / "kitti"), "--detections", str(tmp_path / "dets.json"), "--no-progress",
                     "--classes", "car", "--out", str(tmp_path / "r.json"), *extra]) == 0
        fps.append(json.loads((tmp_path / "r.json").read_text())["results"][0]["num_fp"])
    assert fps == [1, 0]


def test_command_ignores_ground_truth_outside_the_models_range(tmp_path, monkeypatch):
    import sys
    import types

    class FakeDetector:  # sees nothing; its range ends at x = 1 m, so every ground-truth car lies outside it
        class_names = ("car",)
        point_features = ("x", "y", "z", "intensity")
        intensity_scale = 255.0
        config = types.SimpleNamespace(pc_range=(0.0, -1.0, -3.0, 1.0, 1.0, 1.0))

        def __init__(self, *args, **kwargs):
            pass

        def detect(self, points):
            return types.SimpleNamespace(boxes=np.zeros((0, 7), np.float32), scores=np.zeros(0, np.float32),
                                         labels=np.zeros(0, np.int64))

    monkeypatch.setitem(sys.modules, "fastpillars_ros.detector", types.SimpleNamespace(Detector=FakeDetector))
    _write_kitti(tmp_path / "kitti")
    args = ["--data", str(tmp_path / "kitti"), "--config", "tiny", "--no-progress", "--classes", "car"]
    assert _run([*args, "--out", str(tmp_path / "in_range.json")]) == 0
    in_range = json.loads((tmp_path / "in_range.json").read_text())["results"][0]
    assert in_range["num_gt"] == 0 and in_range["num_ignored_gt"] > 0
    assert _run([*args, "--whole-scene", "--out", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())["results"][0]
    assert whole["num_gt"] > 0 and whole["ap"] == 0.0
