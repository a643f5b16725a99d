"""KITTI-format reader on the real KITTI frames and on the simulator's output."""

from __future__ import annotations

import numpy as np
import pytest
from real_data import real_data_dir

from fastpillars_ros.boxes import points_in_boxes
from fastpillars_ros.datasets.kitti import KittiDataset, kitti_difficulty


@pytest.fixture(scope="module")
def real() -> KittiDataset:
    return KittiDataset(real_data_dir() / "kitti")


def test_real_frames_are_listed_and_points_loaded(real):
    assert real.frame_ids == ["000000", "000001", "000006", "000007", "000009", "000010", "000021"]
    f = real[0]
    assert f.points.dtype == np.float32 and f.points.shape == (115384, 4)
    assert 0.0 <= f.points[:, 3].min() and f.points[:, 3].max() <= 1.0


def test_real_labelled_boxes_contain_points(real):
    f0, f1 = real[0], real[1]
    assert f0.names == ["pedestrian"]
    n0 = points_in_boxes(f0.points, f0.boxes).sum(axis=0)
    assert n0[0] > 100  # the pedestrian at 8.6 m
    assert f0.boxes[0, 0] == pytest.approx(8.7, abs=0.2)
    n1 = points_in_boxes(f1.points, f1.boxes).sum(axis=0)
    assert f1.names == ["car", "cyclist"] and np.all(n1 > 0) and np.all(n1 < 100)  # 46-61 m away
    assert points_in_boxes(f1.points, f1.ignored_boxes).sum() > 0  # the truck at 69 m


def test_real_classes_mapped_and_unmapped_types_ignored(real):
    f = real[1]
    assert list(f.labels) == [0, 2] and f.labels.dtype == np.int64
    assert f.kitti_names == ["Car", "Cyclist"]
    assert f.ignored_names == ["Truck"] and f.ignored_boxes.shape == (1, 7)
    custom = KittiDataset(real.root, class_map={"Car": "car", "Truck": "car", "Cyclist": "cyclist"})[1]
    assert sorted(custom.kitti_names) == ["Car", "Cyclist", "Truck"]


def test_real_dontcare_kept_as_image_rectangles_only(real):
    f = real[1]
    assert f.dontcare_bboxes.shape == (4, 4)
    assert "DontCare" not in f.kitti_names and "DontCare" not in f.ignored_names
    assert np.all(np.abs(f.boxes[:, :3]) < 200)


def test_difficulty_follows_kitti_rules(real):
    assert list(real[0].difficulty) == [0]
    assert list(real[1].difficulty) == [-1, -1]  # car 21.6 px high, cyclist occlusion 3
    assert kitti_difficulty((0, 0, 0, 0), 1, 0.0) == 1  # simulator object outside the camera view
    assert kitti_difficulty((0, 100, 10, 130), 0, 0.0) == 1


def test_split_file_selects_frames(real, tmp_path):
    split = tmp_path / "val.txt"
    split.write_text("000001\n")
    ds = KittiDataset(real.root, split_file=split)
    assert len(ds) == 1 and ds[0].frame_id == "000001" and ds[-1].frame_id == "000001"
    with pytest.raises(IndexError):
        ds[1]
