"""viz: BEV pictures from a KITTI frame, a point file and a bag, with ground truth and detections."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from fastpillars_ros import bags
from fastpillars_ros.tools import viz
from fastpillars_ros.tools.regression import FrameDetections, save_detections


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory):
    from fastpillars_ros.sim.generate import simulate_frame, write_frame

    root = tmp_path_factory.mktemp("viz_kitti")
    for i in range(2):
        write_frame(root, f"{i:06d}", simulate_frame(900321, i, "vlp32"))
    return root


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser)
    return viz.run(parser.parse_args(list(argv)))


def test_viz_kitti_frame_writes_png_of_requested_size(kitti_dir, tmp_path):
    out = tmp_path / "k.png"
    assert _run(str(kitti_dir), "--frame", "000001", "--size", "640", "480", "-o", str(out)) == 0
    assert Image.open(out).size == (640, 480)
    view = viz.load_view(kitti_dir, 1)
    assert len(view.gt_boxes) == len(view.gt_names) > 0 and len(view.points) > 1000


def test_viz_point_file_picks_up_kitti_labels(kitti_dir, tmp_path):
    view = viz.load_view(kitti_dir / "velodyne" / "000000.bin")
    frame_view = viz.load_view(kitti_dir, 0)
    np.testing.assert_allclose(view.gt_boxes, frame_view.gt_boxes, atol=1e-9)
    assert view.gt_names == frame_view.gt_names


def test_viz_bag_frame_with_detections_writes_png(tmp_path):
    bag = bags.SAMPLE_BAG
    gt = bags.read_detections(bag)[2]
    dets = tmp_path / "dets.json"
    save_detections([FrameDetections(2, gt.stamp_ns, gt.boxes[:3], [0.9, 0.5, 0.2], ["car", "pedestrian", "cyclist"])],
                    dets)
    out = tmp_path / "bag.png"
    assert _run(str(bag), "--frame", "2", "--detections", str(dets), "--range", "0", "51.2", "-25.6", "25.6",
                "-o", str(out)) == 0
    assert Image.open(out).size == (1000, 1000)
    view = viz.load_view(bag, 2, detections=dets)
    assert view.stamp_ns == gt.stamp_ns and len(view.gt_boxes) == len(gt.boxes)
    assert view.det_names == ["car", "pedestrian", "cyclist"]


def test_viz_overview_tiles_frames(tmp_path):
    views = [viz.load_view(bags.SAMPLE_BAG, k) for k in (0, 1, 2, 3)]
    out = viz.overview(views, tmp_path / "ov.png", cols=2, tile_px=300, title="t")
    assert Image.open(out).size == (600, 640)


def test_viz_reports_bad_input(tmp_path):
    assert _run(str(tmp_path / "missing.bin"), "-o", str(tmp_path / "x.png")) == 1
