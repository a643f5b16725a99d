"""scripts/extract_other_sensors.py and ``eval-real --all-around``: other lidars' scans, labelled all around the
sensor, are brought into the model's frame without moving a point out of its box, their data files cannot run
code, and they are evaluated in every direction."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from real_data import real_file

from fastpillars_ros.boxes import points_in_boxes
from fastpillars_ros.cli import main as cli_main
from fastpillars_ros.datasets.kitti import KittiDataset

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("extract_other_sensors", ROOT / "scripts" / "extract_other_sensors.py")
extract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(extract)


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_quaternion_heading_is_the_angle_about_z():
    angles = np.array([0.0, 0.5, -2.0, 3.0])
    yaw = extract.yaw_of(np.cos(angles / 2), np.zeros(4), np.zeros(4), np.sin(angles / 2))
    assert yaw == pytest.approx(angles)


def test_moving_into_a_sensor_frame_keeps_every_point_in_its_box():
    rng = np.random.default_rng(0)
    box = np.array([[12.0, -4.0, 0.8, 4.5, 1.9, 1.6, 0.7]])
    local = rng.uniform(-0.45, 0.45, (200, 3)) * box[0, 3:6]
    c, s = math.cos(0.7), math.sin(0.7)
    points = np.column_stack([local[:, 0] * c - local[:, 1] * s + 12.0, local[:, 0] * s + local[:, 1] * c - 4.0,
                              local[:, 2] + 0.8, np.full(200, 40.0)])
    pose_rotation, pose_translation = _rotation_z(1.2), np.array([1.35, 0.1, 1.64])
    moved_points, moved_boxes = extract.to_sensor(points, box, pose_rotation, pose_translation)
    assert points_in_boxes(moved_points[:, :3], moved_boxes).all()
    assert moved_points[:, 3] == pytest.approx(points[:, 3])  # intensity untouched
    assert np.linalg.norm(moved_boxes[0, :3]) == pytest.approx(np.linalg.norm(box[0, :3] - pose_translation))


def test_objects_without_a_lidar_point_are_written_as_misc():
    assert extract.kitti_types(["Car", "Pedestrian", "Car"], np.array([12, 0, 1])) == ["Car", "Misc", "Car"]


def test_a_misread_box_convention_is_refused():
    points = np.zeros((10, 4))
    boxes = np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    assert extract.check_counts(points, boxes, np.array([10]), "ok") == 1.0
    with pytest.raises(ValueError, match="box convention"):
        extract.check_counts(points, boxes, np.array([0]), "misread")


def test_the_info_file_reader_loads_plain_data_and_refuses_any_other_global():
    data = {"data_list": [{"bbox_3d": [1.0, 2.0, 0.5, 4.0, 1.8, 1.5, 0.1], "num_lidar_pts": np.int64(3)}]}
    loaded = extract._DataOnly(io.BytesIO(pickle.dumps(data))).load()
    assert loaded == data
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        extract._DataOnly(io.BytesIO(pickle.dumps(np.arange(3.0)))).load()  # arrays need more than data
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        extract._DataOnly(io.BytesIO(pickle.dumps(os.getcwd))).load()


def _turned_kitti_frame(root: Path) -> Path:
    """KITTI 000010 turned by 180 degrees (its labelled cars now behind the sensor), written by the extractor."""
    frame = KittiDataset(real_file("kitti/training/velodyne/000010.bin").parents[1])[5]
    assert frame.frame_id == "000010"
    points = frame.points.astype(np.float64) * np.array([-1.0, -1.0, 1.0, 255.0])  # intensity as other lidars
    boxes = frame.boxes.astype(np.float64).copy()
    boxes[:, :2] *= -1.0
    boxes[:, 6] += math.pi
    names = [{0: "Car", 1: "Pedestrian", 2: "Cyclist"}[int(c)] for c in frame.labels]
    extract.write_frame(root, "000000", points, boxes, names)
    return root


def test_a_scan_labelled_all_around_is_evaluated_behind_the_sensor_too(tmp_path):
    folder = _turned_kitti_frame(tmp_path / "turned")
    reports = {}
    for flag in ("--all-around", "--kitti"):
        out = tmp_path / f"{flag[2:]}.json"
        assert cli_main(["eval-real", "--sets", "", flag, f"d={folder}", "--out", str(out), "--no-progress"]) == 0
        reports[flag] = json.loads(out.read_text())["sets"][0]
    behind = reports["--all-around"]
    assert behind["num_objects"]["car"] >= 5 and behind["recall"]["car"] > 0.5  # found all around
    assert reports["--kitti"]["num_objects"]["car"] == 0  # the camera's view is empty behind the sensor
    assert behind["mounting"] and "m, roll" in behind["mounting"][0]  # mounting estimated per scan
