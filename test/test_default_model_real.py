"""The embedded default on a real scan it never trained on: KITTI development frame 000010 (HDL-64E, a street with
parked cars), as ``Detector()`` builds it (shipped weights, their calibrated default thresholds).

The floors below were fixed once from the shipped model's run on this frame (MODEL_CARD.md, "Real data") and are
not timing-dependent: a model that finds nothing, or floods the view with false objects, fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from real_data import real_data_dir

from fastpillars_ros.config import DEFAULT_MODEL
from fastpillars_ros.datasets.kitti import KittiDataset
from fastpillars_ros.detector import Detector
from fastpillars_ros.evaluation import FrameBoxes
from fastpillars_ros.ops.iou import rotated_iou_bev
from fastpillars_ros.tools.eval_real import false_objects, in_labelled_view

FRAME = "000010"
NEAR_CARS = 25.0  # m: the labelled cars closer than this are well sampled (>= 200 points each)
MAX_FALSE_OBJECTS = 6  # in the camera's view, within 50 m, at the default thresholds


def _near_cars(frame) -> np.ndarray:
    near = np.hypot(frame.boxes[:, 0], frame.boxes[:, 1]) < NEAR_CARS
    return frame.boxes[(np.asarray(frame.names) == "car") & near]


@pytest.fixture(scope="module")
def scan():
    ds = KittiDataset(real_data_dir() / "kitti" / "training", classes=("car", "pedestrian", "cyclist"))
    frame = ds[ds.frame_ids.index(FRAME)]
    det = Detector(DEFAULT_MODEL, device="cpu")
    out = det.detect(frame.points)
    return frame, det, out


def test_the_default_is_the_360_degree_model_with_its_own_thresholds(scan):
    _, det, _ = scan
    assert det.config.pc_range[0] < -40 and det.config.pc_range[1] < -40  # sees behind and beside the sensor
    assert all(t > det.config.decode.score_threshold for t in det.default_score_thresholds.values())
    assert det.weights_licence and "NC" in det.weights_licence  # KITTI-trained weights are non-commercial


def test_finds_the_near_labelled_cars_on_a_real_kitti_scan(scan):
    frame, det, out = scan
    cars = _near_cars(frame)
    assert len(cars) >= 3
    found = out.boxes[out.labels == det.class_names.index("car")]
    assert len(found), "no car detected"
    best = np.asarray(rotated_iou_bev(cars, found)).max(axis=1)
    assert (best >= 0.5).all(), f"best BEV IoU per labelled car: {best.round(2)}"


def test_few_false_objects_in_the_labelled_view(scan):
    frame, det, out = scan
    keep = in_labelled_view(out.boxes, frame.calib, (1242, 375))
    pred = FrameBoxes(out.boxes[keep].astype(np.float64), out.labels[keep], out.scores[keep])
    false = false_objects(pred, frame, det.class_names)
    assert len(pred.boxes) > int(false.sum())  # something true was published
    assert int(false.sum()) <= MAX_FALSE_OBJECTS, f"{int(false.sum())} false objects"


def test_a_car_behind_the_sensor_is_found_like_one_in_front(scan):
    frame, det, _ = scan
    turned = frame.points.copy()
    turned[:, :2] *= -1.0
    back = det.detect(turned)
    behind = _near_cars(frame).copy()
    behind[:, :2] *= -1.0
    found = back.boxes[back.labels == det.class_names.index("car")]
    best = np.asarray(rotated_iou_bev(behind, found)).max(axis=1)
    assert (best >= 0.5).all(), f"best BEV IoU per car turned behind the sensor: {best.round(2)}"
