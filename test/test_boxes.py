"""Box conventions: KITTI labels <-> our LiDAR boxes, det3d <-> ours, corners, points-in-boxes, yaw wrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from real_data import real_file

from fastpillars_ros.boxes import (
    KittiCalib,
    box_corners,
    det3d_to_lidar,
    kitti_to_lidar,
    lidar_to_det3d,
    lidar_to_kitti,
    points_in_boxes,
    wrap_angle,
)
from fastpillars_ros.datasets.kitti import format_label_line, labels_from_lidar_boxes, parse_label_line
from fastpillars_ros.sim.generate import SIM_CALIB


def _random_boxes(rng: np.random.Generator, k: int = 50) -> np.ndarray:
    return np.column_stack([
        rng.uniform(-60, 60, k), rng.uniform(-40, 40, k), rng.uniform(-2, 1, k),
        rng.uniform(0.3, 10, k), rng.uniform(0.3, 3, k), rng.uniform(0.5, 4, k), rng.uniform(-math.pi, math.pi, k)])


def _yaw_close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return bool(np.all(np.abs(wrap_angle(np.asarray(a) - np.asarray(b))) < tol))


def test_wrap_angle_maps_into_half_open_interval():
    a = np.array([-math.pi, math.pi, 3 * math.pi, -3 * math.pi, 0.0, -1e-20, 7.0, -7.0])
    w = wrap_angle(a)
    assert np.all(w >= -math.pi) and np.all(w < math.pi)
    assert np.allclose(np.cos(w), np.cos(a)) and np.allclose(np.sin(w), np.sin(a))
    assert wrap_angle(math.pi) == -math.pi
    assert isinstance(wrap_angle(1.0), float)


def test_label_text_round_trip_is_exact_with_sim_calib():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng)
    boxes[:3, 6] = [math.pi - 1e-7, -math.pi, 3.0]  # near the wrap point
    lines = [format_label_line(o) for o in labels_from_lidar_boxes(["Car"] * len(boxes), boxes, SIM_CALIB)]
    objs = [parse_label_line(line) for line in lines]
    back = kitti_to_lidar(np.array([o.location for o in objs]), np.array([o.dims_hwl for o in objs]),
                          np.array([o.rotation_y for o in objs]), SIM_CALIB)
    assert np.allclose(back[:, :6], boxes[:, :6], atol=1e-5)
    assert _yaw_close(back[:, 6], boxes[:, 6], 2e-6)
    assert np.all(back[:, 6] >= -math.pi) and np.all(back[:, 6] < math.pi)
    assert all(len(line.split()) == 15 for line in lines)


def test_standard_calib_matches_closed_form():
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng)
    loc, dims, ry = lidar_to_kitti(boxes, SIM_CALIB)
    assert _yaw_close(ry, -boxes[:, 6] - math.pi / 2, 1e-9)
    # location = bottom centre: camera y (down) of the bottom = -(z_center - h/2) - camera offset
    assert np.allclose(loc[:, 1], -(boxes[:, 2] - boxes[:, 5] / 2) - 0.08)
    assert np.allclose(dims, boxes[:, [5, 4, 3]])


def test_real_calib_round_trip_and_known_label():
    calib = KittiCalib.from_file(real_file("kitti/training/calib/000000.txt"))
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng)
    back = kitti_to_lidar(*lidar_to_kitti(boxes, calib), calib)
    assert np.allclose(back[:, :6], boxes[:, :6], atol=1e-6)
    assert _yaw_close(back[:, 6], boxes[:, 6], 1e-3)  # small camera tilt: heading projected on its plane
    # 000000's pedestrian: location (1.84, 1.47, 8.41), h 1.89, ry 0.01
    b = kitti_to_lidar(np.array([[1.84, 1.47, 8.41]]), np.array([[1.89, 0.48, 1.20]]), np.array([0.01]), calib)[0]
    assert b[0] == pytest.approx(8.7, abs=0.1) and b[1] == pytest.approx(-1.85, abs=0.1)
    assert b[2] == pytest.approx(-0.65, abs=0.1) and _yaw_close(b[6], -0.01 - math.pi / 2, 0.02)


def test_nonstandard_calib_transforms_corners_consistently():
    # A LiDAR mounted turned 90 degrees left and 0.5 m higher than usual: the conversion must follow the
    # matrices, not the standard closed form.
    yaw0 = math.pi / 2
    rz = np.array([[math.cos(yaw0), -math.sin(yaw0), 0], [math.sin(yaw0), math.cos(yaw0), 0], [0, 0, 1]])
    perm = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
    tr = np.hstack([perm @ rz, np.array([[0.1], [0.5], [-0.2]])])
    calib = KittiCalib(tr_velo_to_cam=tr)
    boxes = _random_boxes(np.random.default_rng(3), 10)
    loc, dims, ry = lidar_to_kitti(boxes, calib)
    back = kitti_to_lidar(loc, dims, ry, calib)
    assert np.allclose(back, np.column_stack([boxes[:, :6], wrap_angle(boxes[:, 6])]), atol=1e-9)
    # The camera-frame box built from (loc, dims, ry) has the same corners as ours mapped into the camera.
    t = calib.velo_to_rect
    ours = box_corners(boxes) @ t[:3, :3].T + t[:3, 3]
    h, w, l_ = dims[:, 0], dims[:, 1], dims[:, 2]
    x = np.array([1, 1, -1, -1]) * l_[:, None] / 2
    z = np.array([1, -1, -1, 1]) * w[:, None] / 2  # camera z of the object's left side: -sin(ry)*... below
    c, s = np.cos(ry)[:, None], np.sin(ry)[:, None]
    bottom = np.stack([c * x + s * z, np.zeros_like(x), -s * x + c * z], axis=2) + loc[:, None]
    top = bottom - np.stack([np.zeros_like(x), h[:, None] * np.ones_like(x), np.zeros_like(x)], axis=2)
    cam = np.concatenate([bottom, top], axis=1)
    for k in range(len(boxes)):  # same corner set (order conventions differ)
        d = np.linalg.norm(ours[k][:, None] - cam[k][None], axis=2)
        assert d.min(axis=1).max() < 1e-9


def test_det3d_round_trip_and_axis_convention():
    rng = np.random.default_rng(4)
    ours = _random_boxes(rng)
    d = lidar_to_det3d(ours)
    assert np.allclose(d[:, 3], ours[:, 4]) and np.allclose(d[:, 4], ours[:, 3])
    back = det3d_to_lidar(d)
    assert np.allclose(back[:, :6], ours[:, :6]) and _yaw_close(back[:, 6], ours[:, 6], 1e-12)
    vel = rng.normal(size=(len(ours), 2))
    d9 = lidar_to_det3d(ours, vel)
    assert d9.shape == (len(ours), 9) and np.allclose(d9[:, 6:8], vel)
    b9 = det3d_to_lidar(d9)
    assert np.allclose(b9[:, 7:9], vel) and np.allclose(b9[:, :6], ours[:, :6])
    one = det3d_to_lidar(np.array([[1.0, 2.0, 3.0, 1.8, 4.5, 1.6, 0.0]]))[0]
    assert one[3] == 4.5 and one[4] == 1.8 and one[6] == pytest.approx(-math.pi / 2)


def test_box_corners_order_and_dimensions():
    b = np.array([[10.0, 5.0, -1.0, 4.0, 2.0, 1.5, math.pi / 2]])
    c = box_corners(b)[0]
    assert c.shape == (8, 3)
    # heading +y: front-left corner is at +y (front) and -x (left of +y)
    assert np.allclose(c[0], [9.0, 7.0, -1.75])
    assert np.allclose(c[4], [9.0, 7.0, -0.25])
    assert np.isclose(np.linalg.norm(c[0] - c[3]), 4.0) and np.isclose(np.linalg.norm(c[0] - c[1]), 2.0)


def test_points_in_boxes_matches_brute_force_loop():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 12)
    boxes[:, :2] = rng.uniform(-8, 8, (12, 2))
    pts = rng.uniform([-12, -12, -4], [12, 12, 3], (4000, 3))
    got = points_in_boxes(pts, boxes, chunk=512)
    want = np.zeros_like(got)
    for k, (x, y, z, length, width, height, yaw) in enumerate(boxes):
        for n, (px, py, pz) in enumerate(pts):
            u = (px - x) * math.cos(yaw) + (py - y) * math.sin(yaw)
            v = -(px - x) * math.sin(yaw) + (py - y) * math.cos(yaw)
            want[n, k] = abs(u) <= length / 2 and abs(v) <= width / 2 and abs(pz - z) <= height / 2
    assert got.any() and np.array_equal(got, want)
    assert points_in_boxes(pts, np.zeros((0, 7))).shape == (4000, 0)
