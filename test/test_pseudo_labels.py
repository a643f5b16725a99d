"""Pseudo-labels for self-training on real scans: the teacher's views of a scan, their fusion, which boxes become
labels, ignore boxes or nothing, the files ``fastpillars-ros pseudo-label`` writes, and how often real frames
are drawn per epoch."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from real_data import real_data_dir, real_file

from fastpillars_ros.boxes import points_in_boxes
from fastpillars_ros.datasets.kitti import KittiDataset
from fastpillars_ros.tools import pseudo_label
from fastpillars_ros.tools.eval_real import parse_class_values
from fastpillars_ros.train.data import camera_half_fov
from fastpillars_ros.train.engine import epoch_indices
from fastpillars_ros.train.pseudo_labels import (
    VIEWS,
    fuse_views,
    outside_half_fov,
    pseudo_labels,
    view_boxes,
    view_points,
)

CAR = np.array([[12.0, -5.0, -0.9, 4.2, 1.8, 1.5, 0.4]])


def _blob(box: np.ndarray, n: int = 200, seed: int = 0) -> np.ndarray:
    """``(n, 4)`` points filling ``box`` (ours), intensity 0.5."""
    rng = np.random.default_rng(seed)
    local = (rng.random((n, 3)) - 0.5) * box[3:6] * 0.9
    c, s = math.cos(box[6]), math.sin(box[6])
    xy = local[:, :2] @ np.array([[c, s], [-s, c]]) + box[:2]
    return np.column_stack([xy, local[:, 2] + box[2], np.full(n, 0.5)]).astype(np.float32)


def test_every_view_brings_its_boxes_back_onto_the_recorded_points():
    points = _blob(CAR[0])
    for view in VIEWS:
        seen = view_points(points, view)
        box_in_view = view_boxes(CAR, view)
        assert points_in_boxes(seen[:, :3], box_in_view).all()
        assert np.allclose(view_boxes(box_in_view, view)[:, :6], CAR[:, :6])
        assert math.isclose(math.cos(view_boxes(box_in_view, view)[0, 6] - CAR[0, 6]), 1.0, abs_tol=1e-9)


def test_fused_score_is_the_mean_over_views_and_a_box_seen_once_gets_a_quarter():
    both = np.array([[10.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.0]])
    once = np.array([[-20.0, 5.0, -1.0, 0.6, 0.6, 1.7, 0.0]])
    per_view = [(np.concatenate([both, once]), np.array([0.8, 0.6]), np.array([0, 1]))]
    per_view += [(both + np.array([0.3, 0.2, 0, 0, 0, 0, 0]), np.array([0.6]), np.array([0])) for _ in range(3)]
    boxes, scores, labels = fuse_views(per_view, {0: 1.5, 1: 0.6})
    assert np.allclose(scores, [(0.8 + 3 * 0.6) / 4, 0.6 / 4])
    assert labels.tolist() == [0, 1] and np.allclose(boxes[0], both[0])


def test_boxes_of_two_classes_at_one_place_stay_two_objects():
    box = np.array([[10.0, 0.0, -1.0, 1.0, 0.6, 1.7, 0.0]])
    per_view = [(np.concatenate([box, box]), np.array([0.7, 0.5]), np.array([1, 2]))] * 4
    _, scores, labels = fuse_views(per_view, {1: 0.6, 2: 0.8})
    assert sorted(labels.tolist()) == [1, 2] and np.allclose(sorted(scores), [0.5, 0.7])


def test_outside_half_fov_is_the_unlabelled_part_of_a_camera_view_scan():
    boxes = np.array([[20.0, 5.0, 0, 1, 1, 1, 0], [5.0, 20.0, 0, 1, 1, 1, 0], [-10.0, 0.0, 0, 1, 1, 1, 0]])
    assert outside_half_fov(boxes, math.radians(40)).tolist() == [False, True, True]


def _teacher(objects: dict[tuple[float, float], tuple[int, float]]):
    """A stand-in teacher: it finds each object of the recorded scan (centre -> class, score) wherever the view it
    is shown puts that object's points."""
    def detect(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, labels = [], [], []
        for (x, y), (label, score) in objects.items():
            for view in VIEWS:
                seen = view_boxes(np.array([[x, y, -1.0, 1.0, 1.0, 1.0, 0.0]]), view)[0]
                if (np.hypot(points[:, 0] - seen[0], points[:, 1] - seen[1]) < 0.5).any():
                    boxes.append(seen)
                    scores.append(score)
                    labels.append(label)
                    break
        return np.array(boxes).reshape(-1, 7), np.array(scores), np.array(labels, dtype=np.int64)
    return detect


def test_sure_boxes_become_labels_unsure_ones_ignore_boxes_and_faint_ones_nothing():
    places = {(-15.0, 3.0): (0, 0.9), (-8.0, -12.0): (1, 0.3), (4.0, 25.0): (2, 0.05)}
    points = np.concatenate([_blob(np.array([x, y, -1.0, 0.8, 0.8, 1.0, 0.0]), 50, k)
                             for k, (x, y) in enumerate(places)])
    pl = pseudo_labels(_teacher(places), points, keep=[0.5, 0.5, 0.5], floor=0.2, radius={0: 1.5, 1: 0.6, 2: 0.8})
    assert pl.labels.tolist() == [0] and np.allclose(pl.boxes[0, :2], [-15.0, 3.0], atol=0.2)
    assert np.allclose(pl.scores, [0.9])
    assert len(pl.ignored) == 1 and np.allclose(pl.ignored[0, :2], [-8.0, -12.0], atol=0.2)


def test_inside_the_labelled_view_and_next_to_a_label_the_teacher_adds_nothing():
    places = {(15.0, 2.0): (0, 0.9), (-15.0, 3.0): (0, 0.9), (-30.0, 0.0): (0, 0.9)}
    points = np.concatenate([_blob(np.array([x, y, -1.0, 0.8, 0.8, 1.0, 0.0]), 50, k)
                             for k, (x, y) in enumerate(places)])
    known = np.array([[-30.5, 0.5, -1.0, 4.0, 1.8, 1.5, 0.0]])
    pl = pseudo_labels(_teacher(places), points, keep=[0.5], floor=0.2, radius={0: 1.5}, known=known,
                       half_fov=math.radians(40))
    assert len(pl.boxes) == 1 and np.allclose(pl.boxes[0, :2], [-15.0, 3.0], atol=0.2)


def test_pseudo_label_command_keeps_camera_labels_and_labels_the_rest_of_a_real_scan(tmp_path: Path):
    src = tmp_path / "drive"
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt")):
        (src / sub).mkdir(parents=True)
        shutil.copyfile(real_file(f"kitti/training/{sub}/000010.{ext}"), src / sub / f"000010.{ext}")
    args = argparse.ArgumentParser()
    pseudo_label.add_arguments(args)
    out = tmp_path / "pseudo"
    assert pseudo_label.run(args.parse_args(["--data", str(src), "--out", str(out), "--camera-view"])) == 0
    own = (src / "label_2" / "000010.txt").read_text().splitlines()
    written = (out / "label_2" / "000010.txt").read_text().splitlines()
    assert written[:len(own)] == own
    added = KittiDataset(out)[0]
    original = KittiDataset(src)[0]
    new_boxes = added.boxes[len(original.boxes):]
    assert len(new_boxes) > 0, "the teacher labels some object behind or beside the car"
    assert outside_half_fov(new_boxes, camera_half_fov(added.calib)).all()
    assert len(added.ignored_boxes) >= len(original.ignored_boxes)
    assert np.array_equal(added.points, original.points)


def test_an_epoch_caps_the_plain_frames_and_repeats_every_real_frame():
    assert epoch_indices(5, 2, max_frames=3, real_repeat=2) == [0, 1, 2, 5, 5, 6, 6]
    assert epoch_indices(2, 0, max_frames=None, real_repeat=3) == [0, 1]


def test_pseudo_label_command_refuses_a_keep_list_without_every_class(tmp_path: Path, capsys):
    args = argparse.ArgumentParser()
    pseudo_label.add_arguments(args)
    parsed = args.parse_args(["--data", str(real_data_dir() / "kitti"), "--out", str(tmp_path), "--keep", "car=0.5"])
    assert pseudo_label.run(parsed) == 2
    assert "--keep 'car=0.5'" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_class_value_lists_name_the_flag_when_a_class_or_number_is_wrong():
    assert parse_class_values("car=0.5, cyclist=0.2", ["car", "pedestrian", "cyclist"], "--x") == {
        "car": 0.5, "cyclist": 0.2}
    for bad in ("truck=0.5", "car=high", "car"):
        with pytest.raises(ValueError, match="--x"):
            parse_class_values(bad, ["car"], "--x")
