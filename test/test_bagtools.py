"""bagtools: KITTI folder -> mcap bag -> clouds and ground truth, without ROS."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from fastpillars_ros import bags
from fastpillars_ros.datasets.kitti import KittiDataset
from fastpillars_ros.tools import make_bag

DETECTION3DARRAY_RIHS01 = "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018"


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory):
    from fastpillars_ros.sim.generate import simulate_frame, write_frame

    root = tmp_path_factory.mktemp("kitti")
    for i in range(3):
        write_frame(root, f"{i:06d}", simulate_frame(900123, i, "vlp32"))
    return root


def _same_boxes(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-9)
    dyaw = (a[:, 6] - b[:, 6] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(dyaw, 0.0, atol=1e-9)


def test_make_bag_round_trip_equals_kitti_input(kitti_dir, tmp_path):
    out = tmp_path / "rt.mcap"
    summary = bags.kitti_to_bag(kitti_dir, out, topic="/lidar/points", frame_id="lidar", rate=5.0)
    assert summary.frames == 3 and out.is_file()
    assert bags.topic_types(out) == {"/lidar/points": bags.POINTCLOUD2,
                                         "/ground_truth": bags.DETECTION3DARRAY}
    ds = KittiDataset(kitti_dir)
    clouds = list(bags.read_clouds(out))
    truth = bags.read_detections(out)
    assert len(clouds) == len(truth) == 3
    for i, (cloud, gt) in enumerate(zip(clouds, truth, strict=True)):
        frame = ds[i]
        np.testing.assert_array_equal(cloud.points, frame.points)
        assert cloud.frame_id == gt.frame_id == "lidar"
        assert cloud.stamp_ns == gt.stamp_ns == cloud.bag_time_ns == bags.DEFAULT_START_NS + i * 200_000_000
        _same_boxes(gt.boxes, frame.boxes)
        assert gt.names == list(frame.names)
        np.testing.assert_array_equal(gt.scores, 1.0)


def test_make_bag_crop_keeps_points_and_boxes_inside_and_quantises(kitti_dir, tmp_path):
    rng = [0.0, -25.6, -3.0, 51.2, 25.6, 1.0]
    out = tmp_path / "crop.mcap"
    bags.kitti_to_bag(kitti_dir, out, crop=rng, quantize=1 / 64, max_frames=1)
    (cloud,) = bags.read_clouds(out)
    (gt,) = bags.read_detections(out)
    p = cloud.points
    assert len(p) and (p[:, 0] >= 0).all() and (p[:, 0] < 51.2).all() and (np.abs(p[:, 1]) <= 25.6).all()
    np.testing.assert_array_equal(p[:, :3] * 64, np.round(p[:, :3] * 64))
    assert (gt.boxes[:, 0] >= 0).all() and (gt.boxes[:, 0] < 51.2).all()
    assert len(gt.boxes) < len(KittiDataset(kitti_dir)[0].boxes)


def test_make_bag_compressed_directory_bag_reads_back(kitti_dir, tmp_path):
    plain, packed = tmp_path / "plain.mcap", tmp_path / "packed_dir"
    bags.kitti_to_bag(kitti_dir, plain)
    parser = argparse.ArgumentParser()
    make_bag.add_arguments(parser)
    assert make_bag.run(parser.parse_args(["--kitti", str(kitti_dir), "--out", str(packed), "--compress",
                                           "--rate", "10"])) == 0
    assert (packed / "metadata.yaml").is_file()
    size = sum(p.stat().st_size for p in packed.rglob("*.mcap"))
    assert size < plain.stat().st_size
    for a, b in zip(bags.read_clouds(plain), bags.read_clouds(packed), strict=True):
        np.testing.assert_array_equal(a.points, b.points)
    assert make_bag.run(parser.parse_args(["--kitti", str(kitti_dir), "--out", str(packed)])) == 1  # exists


def test_vision_msgs_type_hash_matches_upstream():
    assert bags.typestore().hash_rihs01("vision_msgs/msg/Detection3DArray") == DETECTION3DARRAY_RIHS01


def test_header_from_cdr_reads_stamp_and_frame():
    msg = bags.detections_message(np.zeros((2, 7)), [0.5, 0.4], ["car", "cyclist"], 1_234_567_890_123, "base")
    raw = bags.typestore().serialize_cdr(msg, bags.DETECTION3DARRAY)
    assert bags.header_from_cdr(raw) == (1_234_567_890_123, "base")


def test_bag_with_rclpy_messages_matches_rclpy_deserialisation(tmp_path):
    """CDR written by rosbags is what rclpy reads (so replayed bytes are valid ROS messages)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from fastpillars_ros.pointcloud import cloud_to_array

    pts = np.random.default_rng(1).random((50, 4), dtype=np.float32)
    raw = bags.typestore().serialize_cdr(bags.cloud_message(pts, 5_000_000_001, "velodyne"),
                                             bags.POINTCLOUD2)
    msg = deserialize_message(bytes(raw), PointCloud2)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (5, 1, "velodyne")
    np.testing.assert_array_equal(cloud_to_array(msg), pts)


def test_sample_bag_is_shipped_with_ground_truth():
    assert bags.SAMPLE_BAG.is_file()
    assert bags.SAMPLE_BAG.stat().st_size <= 8_000_000
    types = bags.topic_types(bags.SAMPLE_BAG)
    assert types == {"/points": bags.POINTCLOUD2, "/ground_truth": bags.DETECTION3DARRAY}
    truth = bags.read_detections(bags.SAMPLE_BAG)
    assert len(truth) >= make_bag.SAMPLE_RECIPE["frames"] >= 30
    assert sum(len(t.names) for t in truth) > 0
    first = next(bags.read_clouds(bags.SAMPLE_BAG))
    assert first.points.shape[1] == 4 and len(first.points) > 10_000 and first.frame_id == "velodyne"


def test_make_bag_is_byte_for_byte_reproducible(kitti_dir, tmp_path):
    a, b = tmp_path / "a" / "s.mcap", tmp_path / "b" / "s.mcap"
    for out in (a, b):
        bags.kitti_to_bag(kitti_dir, out, compress=True, level=3, crop=[0, -20, -3, 40, 20, 1], quantize=1 / 64)
    assert a.read_bytes() == b.read_bytes()


def test_make_sample_bag_recipe_is_the_shipped_one():
    """The shipped bag was made by make_sample_bag (same frames, stamps, crop and quantisation)."""
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.sim.generate import simulate_frame

    r = make_bag.SAMPLE_RECIPE
    first = next(bags.read_clouds(bags.SAMPLE_BAG))
    sim = simulate_frame(r["seed"], 0, r["sensor"], label_style=r["label_style"])
    expected = bags.quantize_points(bags.crop_points(sim.points, load_model_config(r["model"]).pc_range),
                                        r["quantize"])
    np.testing.assert_array_equal(first.points, expected)
    assert first.stamp_ns == bags.DEFAULT_START_NS
    truth = bags.read_detections(bags.SAMPLE_BAG)[0]  # ground truth in the recipe's label style
    for box in truth.boxes:
        match = np.hypot(*(sim.boxes[:, :2] - box[:2]).T).argmin()
        np.testing.assert_allclose(box[3:6], sim.boxes[match, 3:6], atol=1e-3)


def test_reads_sqlite3_bags_directory_and_db3_file(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    pts = np.random.default_rng(3).random((100, 4), dtype=np.float32)
    path = tmp_path / "sq"
    store = bags.typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conn = writer.add_connection("/cloud", bags.POINTCLOUD2, typestore=store)
        for i in range(3):
            t = 10**9 * (i + 1)
            writer.write(conn, t, store.serialize_cdr(bags.cloud_message(pts + i, t, "lidar"),
                                                      bags.POINTCLOUD2))
    (db3,) = path.glob("*.db3")
    for bag in (path, db3):
        clouds = list(bags.read_clouds(bag))
        assert [c.stamp_ns for c in clouds] == [10**9, 2 * 10**9, 3 * 10**9]
        np.testing.assert_array_equal(clouds[2].points, pts + 2)
