"""Mounting: a sensor that is not where the model's was (height, roll, pitch) gives the same objects once its
mounting is stated or estimated (fastpillars_ros.mounting, Detector(mounting=...))."""

from __future__ import annotations

import math

import numpy as np
import pytest
from real_data import real_file

from fastpillars_ros.config import load_model_config
from fastpillars_ros.detector import Detector
from fastpillars_ros.mounting import (
    AutoMounting,
    Mounting,
    boxes_to_cloud,
    estimate_ground,
    points_to_model,
)
from fastpillars_ros.pointcloud import read_points

KITTI_HEIGHT = 1.73  # the HDL-64 above the road; the tiny model's training height
LOW_PITCHED = Mounting(height=0.6, roll=0.0, pitch=math.radians(5.0))  # a small robot's lidar, nose down


def as_seen_by(points: np.ndarray, mounting: Mounting) -> np.ndarray:
    """A KITTI scan re-expressed in the frame of a sensor with ``mounting`` above the same ground:
    the inverse of the convention ``p_ground = R p + (0, 0, height)`` with KITTI's ``p_ground = p + (0, 0, 1.73)``."""
    out = points.copy()
    out[:, :3] = (points[:, :3] + [0.0, 0.0, KITTI_HEIGHT - mounting.height]) @ mounting.rotation
    return out


@pytest.fixture(scope="module", params=["000000", "000001"])
def scan(request) -> np.ndarray:
    return read_points(real_file(f"kitti/training/velodyne/{request.param}.bin"))


@pytest.fixture(scope="module")
def original(scan):
    return Detector("tiny", device="cpu", precision="fp32", warmup=False).detect(scan)


def _same_objects(found, expected_boxes, expected, min_score=0.5, max_distance=1.0) -> list[str]:
    """Expected detections (score >= min_score) with no found detection of the same label within
    ``max_distance`` metres (bird's-eye view): empty when the same objects are found."""
    missing = []
    for box, score, label in zip(expected_boxes, expected.scores, expected.labels, strict=True):
        if score < min_score:
            continue
        same = found.labels == label
        dist = np.linalg.norm(found.boxes[same, :2] - box[:2], axis=1)
        if not len(dist) or dist.min() > max_distance:
            missing.append(f"label {label} score {score:.2f} at {box[:2].round(2)}")
    return missing


def test_convention_puts_the_cloud_origin_at_its_height_and_pitch_down_lowers_the_nose():
    m = Mounting(height=0.6, pitch=math.radians(10.0))
    forward_1m = points_to_model(np.array([[1.0, 0.0, 0.0, 0.5]], np.float32), m, model_height=0.6)
    assert forward_1m[0, 2] == pytest.approx(-math.sin(math.radians(10.0)), abs=1e-6)  # nose down
    assert forward_1m[0, 3] == 0.5  # other columns untouched
    origin = points_to_model(np.zeros((1, 3), np.float32), m, model_height=KITTI_HEIGHT)
    np.testing.assert_allclose(origin[0], [0.0, 0.0, 0.6 - KITTI_HEIGHT], atol=1e-6)


def test_height_zero_means_the_models_own_height():
    pts = np.array([[10.0, 2.0, -1.0]], np.float32)
    np.testing.assert_array_equal(points_to_model(pts, Mounting(), KITTI_HEIGHT), pts)
    assert Mounting().is_identity(KITTI_HEIGHT) and Mounting(height=KITTI_HEIGHT).is_identity(KITTI_HEIGHT)


def test_bad_mountings_are_rejected_with_the_unit():
    with pytest.raises(ValueError, match="above the ground"):
        Mounting(height=-0.5)
    with pytest.raises(ValueError, match="radians"):
        Mounting(pitch=5.0)


def test_boxes_go_back_to_the_cloud_frame_exactly_inverting_the_points():
    m = Mounting(height=2.5, roll=math.radians(-3.0), pitch=math.radians(7.0))
    centre = np.array([[12.0, -3.0, 0.4]], np.float32)
    box_model = np.concatenate([points_to_model(centre, m, KITTI_HEIGHT), [[4.0, 1.8, 1.5, 0.3]]], axis=1)
    back, vel = boxes_to_cloud(box_model.astype(np.float32), m, KITTI_HEIGHT, np.array([[1.0, 0.0]], np.float32))
    np.testing.assert_allclose(back[0, :3], centre[0], atol=1e-5)
    np.testing.assert_allclose(back[0, 3:6], [4.0, 1.8, 1.5])
    # A small tilt barely turns the heading seen from above.
    assert back[0, 6] == pytest.approx(0.3, abs=0.01) and vel[0] == pytest.approx([1.0, 0.0], abs=0.01)


def test_mounting_from_a_ground_frame_transform_ignores_yaw_and_horizontal_offset():
    m = Mounting(height=1.2, roll=0.05, pitch=0.1)
    yaw = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # the ground frame turned 90 degrees
    got = Mounting.from_transform(yaw @ m.rotation, np.array([0.3, -0.2, 1.2]))
    assert (got.height, got.roll, got.pitch) == pytest.approx((1.2, 0.05, 0.1), abs=1e-9)


def test_ground_fit_recovers_a_flat_ground_under_objects_and_noise():
    rng = np.random.default_rng(3)
    truth = Mounting(height=0.45, roll=math.radians(2.0), pitch=math.radians(-4.0))
    ground = np.column_stack([rng.uniform(-30, 30, (40_000, 2)), rng.normal(0.0, 0.02, 40_000)])
    walls = np.column_stack([rng.uniform(5, 20, 10_000), np.full(10_000, 6.0), rng.uniform(0.0, 3.0, 10_000)])
    cars = np.column_stack([rng.uniform(8, 12, 5_000), rng.uniform(-3, -1, 5_000), rng.uniform(0.0, 1.5, 5_000)])
    world = np.concatenate([ground, walls, cars])
    cloud = (world - [0.0, 0.0, truth.height]) @ truth.rotation  # p = R^T (p_ground - (0, 0, h))
    est = estimate_ground(cloud)
    assert est.mounting.height == pytest.approx(truth.height, abs=0.01)
    assert (est.mounting.roll, est.mounting.pitch) == pytest.approx((truth.roll, truth.pitch), abs=math.radians(0.2))
    assert est.inlier_fraction > 0.8 and est.rms < 0.03


def test_ground_fit_of_a_cloud_without_ground_is_none():
    sky = np.random.default_rng(0).uniform(-20, 20, (1000, 3)) * [1, 1, 0] + [0, 0, 5.0]  # a ceiling above
    assert estimate_ground(sky) is None


def test_stated_mounting_gives_the_original_detections_of_a_low_pitched_sensor(scan, original):
    seen = as_seen_by(scan, LOW_PITCHED)
    got = Detector("tiny", device="cpu", precision="fp32", warmup=False, mounting=LOW_PITCHED).detect(seen)
    expected, _ = boxes_to_cloud(original.boxes, LOW_PITCHED, KITTI_HEIGHT)
    assert len(original) > 0 and len(got) == len(original)
    np.testing.assert_allclose(got.boxes[:, :3], expected[:, :3], atol=0.02)
    np.testing.assert_allclose(np.cos(got.boxes[:, 6] - expected[:, 6]), 1.0, atol=1e-3)
    np.testing.assert_allclose(got.scores, original.scores, atol=0.01)
    np.testing.assert_array_equal(got.labels, original.labels)


def test_without_the_mounting_the_low_pitched_sensor_loses_the_objects(scan, original):
    """The contrast that makes the test above meaningful: the model does need the correction."""
    got = Detector("tiny", device="cpu", precision="fp32", warmup=False).detect(as_seen_by(scan, LOW_PITCHED))
    expected, _ = boxes_to_cloud(original.boxes, LOW_PITCHED, KITTI_HEIGHT)
    assert len(_same_objects(got, expected, original)) >= 3


def test_ground_fit_of_the_low_pitched_scan_finds_its_mounting(scan):
    """KITTI's road is not exactly level in the sensor's axes (about 1-2 degrees, a few cm of height), so the
    absolute check is loose; the fit must follow the sensor exactly (the same plane from both mountings)."""
    level, pitched = estimate_ground(scan), estimate_ground(as_seen_by(scan, LOW_PITCHED))
    m = pitched.mounting
    assert m.height == pytest.approx(0.6, abs=0.1)
    assert (m.roll, m.pitch) == pytest.approx((0.0, math.radians(5.0)), abs=math.radians(2.0))
    assert m.pitch - level.mounting.pitch == pytest.approx(math.radians(5.0), abs=math.radians(0.1))
    assert m.roll - level.mounting.roll == pytest.approx(0.0, abs=math.radians(0.2))
    assert pitched.quality > 0.3


def test_auto_mounting_finds_the_same_objects_whatever_the_mounting(scan):
    on_level = Detector("tiny", device="cpu", precision="fp32", warmup=False, mounting=AutoMounting()).detect(scan)
    det = Detector("tiny", device="cpu", precision="fp32", warmup=False, mounting=AutoMounting())
    got = det.detect(as_seen_by(scan, LOW_PITCHED))
    assert det.mounting is not None and det.mounting.height == pytest.approx(0.6, abs=0.1)
    expected, _ = boxes_to_cloud(on_level.boxes, LOW_PITCHED, KITTI_HEIGHT)
    assert _same_objects(got, expected, on_level) == []


def test_auto_mounting_keeps_the_first_fit_and_refines_slowly(scan):
    auto = AutoMounting(smoothing=0.1, every=1)
    first = auto.update(as_seen_by(scan, Mounting(height=1.0)))
    moved = auto.update(as_seen_by(scan, Mounting(height=0.5)))
    assert moved.height == pytest.approx(first.height - 0.1 * 0.5, abs=0.01)
    assert auto.fits == 2 and auto.rejected == 0


def test_auto_mounting_ignores_clouds_without_ground():
    auto = AutoMounting()
    assert auto.update(np.zeros((0, 4), np.float32)) is None and auto.rejected == 1


def test_the_models_training_height_is_part_of_its_config():
    assert load_model_config("tiny").sensor_height == KITTI_HEIGHT
