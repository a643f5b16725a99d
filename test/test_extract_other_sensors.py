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


class _FakePandas:
    """Pickles like a pandas object of the PandaSet era: its class is named as pandas' own, its state kept."""

    def __init__(self, state: object) -> None:
        self.state = state

    def __getstate__(self) -> object:
        return self.state


def _pickled_table(columns: dict[str, np.ndarray], monkeypatch) -> bytes:
    """A DataFrame pickle the way pandas wrote PandaSet's files (``BlockManager`` state under the version key
    0.14.1, the columns an ``Index`` rebuilt by ``_new_Index``), made without pandas: stand-ins registered under
    pandas' module names."""
    import sys
    import types

    for package in ("pandas", "pandas.core", "pandas.core.internals", "pandas.core.indexes"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    made = {}
    for module, name in (("pandas.core.frame", "DataFrame"), ("pandas.core.internals.managers", "BlockManager"),
                         ("pandas.core.indexes.base", "Index")):
        made[name] = type(name, (_FakePandas,), {"__module__": module, "__qualname__": name})
        monkeypatch.setitem(sys.modules, module, sys.modules.get(module) or types.ModuleType(module))
        setattr(sys.modules[module], name, made[name])

    def _new_Index(cls, data):  # pandas' own name
        return cls(data)

    _new_Index.__module__, _new_Index.__qualname__ = "pandas.core.indexes.base", "_new_Index"
    sys.modules["pandas.core.indexes.base"]._new_Index = _new_Index
    made["Index"].__reduce__ = lambda self: (_new_Index, (type(self), self.state))
    names = list(columns)
    floats = [k for k in names if columns[k].dtype.kind == "f"]
    others = [k for k in names if k not in floats]
    blocks = [{"values": np.stack([columns[k] for k in floats]),
               "mgr_locs": np.array([names.index(k) for k in floats])},
              {"values": np.stack([columns[k] for k in others]).astype(object),
               "mgr_locs": slice(names.index(others[0]), names.index(others[0]) + len(others), 1)}]
    axes = [made["Index"]({"data": np.array(names, dtype=object), "name": None}), np.arange(len(columns[names[0]]))]
    state = (axes, [b["values"] for b in blocks], [], {"0.14.1": {"axes": axes, "blocks": blocks}})
    frame = {"_data": made["BlockManager"](state), "_typ": "dataframe", "_metadata": [], "attrs": {}}
    return pickle.dumps(made["DataFrame"](frame))


def test_pandaset_tables_are_read_into_plain_columns_without_pandas(monkeypatch):
    columns = {"x": np.array([1.0, 2.0]), "label": np.array(["Car", "Pedestrian"], dtype=object),
               "i": np.array([10.0, 200.0])}
    raw = _pickled_table(columns, monkeypatch)
    table = extract._PandasTable(io.BytesIO(raw)).table()
    assert set(table) == {"x", "label", "i"}
    assert table["x"] == pytest.approx([1.0, 2.0]) and table["i"] == pytest.approx([10.0, 200.0])
    assert list(table["label"]) == ["Car", "Pedestrian"]


def test_pandaset_table_reader_refuses_any_other_global():
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        extract._PandasTable(io.BytesIO(pickle.dumps(os.getcwd))).table()


def _pandaset_inputs(heading: float, position: np.ndarray):
    """A car 10 m ahead of a Pandar64 whose forward (+y of its own frame) points ``heading`` rad from world +x."""
    rng = np.random.default_rng(1)
    forward = np.array([math.cos(heading), math.sin(heading), 0.0])
    left = np.array([-math.sin(heading), math.cos(heading), 0.0])
    centre = position + 10.0 * forward + np.array([0.0, 0.0, -1.0])
    # The car is parked across the sensor's line of sight: its length along the sensor's left-right axis.
    local = rng.uniform(-0.45, 0.45, (300, 3)) * np.array([4.5, 1.8, 1.5])   # along length, width, height
    car = centre + local[:, :1] * left + local[:, 1:2] * forward + local[:, 2:3] * np.array([0.0, 0.0, 1.0])
    bicycle = centre + 30.0 * forward + rng.uniform(-0.25, 0.25, (20, 3))
    gt_lidar = centre + rng.normal(0, 5, (50, 3))
    pts = np.vstack([car, bicycle, gt_lidar])
    scan = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "i": np.full(len(pts), 50.0),
            "d": np.r_[np.zeros(320, int), np.ones(50, int)]}
    length_dir = math.atan2(left[1], left[0])
    yaw = length_dir - math.pi / 2      # PandaSet: yaw 0 = length along world +y
    cuboids = {"label": np.array(["Car", "Car", "Pedestrian", "Bicycle"], dtype=object),
               "cuboids.sensor_id": np.array([-1, 1, -1, -1]),
               "position.x": np.r_[centre[0], centre[0], centre[0] + 30 * forward[0], centre[0] + 30 * forward[0]],
               "position.y": np.r_[centre[1], centre[1], centre[1] + 30 * forward[1], centre[1] + 30 * forward[1]],
               "position.z": np.r_[centre[2], centre[2], centre[2], centre[2]],
               "dimensions.x": np.r_[1.8, 1.8, 0.6, 0.6], "dimensions.y": np.r_[4.5, 4.5, 0.6, 1.8],
               "dimensions.z": np.r_[1.5, 1.5, 1.7, 1.7], "yaw": np.r_[yaw, yaw, 0.0, yaw],
               "attributes.rider_status": np.array([None, None, None, "With Rider"], dtype=object)}
    # The sensor frame's +y is forward: the world-from-sensor rotation turns sensor +y onto ``forward``.
    half = (heading - math.pi / 2) / 2
    pose = {"position": dict(zip("xyz", position.tolist(), strict=True)),
            "heading": {"w": math.cos(half), "x": 0.0, "y": 0.0, "z": math.sin(half)}}
    return scan, cuboids, pose


def test_a_pandaset_frame_is_brought_into_the_sensors_forward_x_frame():
    scan, cuboids, pose = _pandaset_inputs(heading=0.8, position=np.array([5.0, -3.0, 0.2]))
    points, boxes, types = extract.pandaset_frame(scan, cuboids, pose)
    assert len(points) == 320                                  # the solid-state lidar's points are left out
    assert types == ["Car", "Cyclist"]                         # its cuboid (sensor 1) and the rider are dropped
    car = boxes[0]
    assert car[:2] == pytest.approx([10.0, 0.0], abs=1e-6)    # 10 m ahead on the sensor's x axis
    assert abs(math.sin(car[6])) == pytest.approx(1.0, abs=1e-6)  # parked across: length along y
    assert points_in_boxes(points[:300, :3], boxes[:1]).all()
    extract.check_headings(points, boxes, types, "synthetic")


def test_a_misread_pandaset_heading_is_refused():
    scan, cuboids, pose = _pandaset_inputs(heading=-2.0, position=np.zeros(3))
    points, boxes, types = extract.pandaset_frame(scan, cuboids, pose)
    boxes[:, 6] += math.pi / 2
    with pytest.raises(ValueError, match="heading convention"):
        extract.check_headings(points, boxes, types, "misread")
