"""The node's frames: output_frame moves the boxes with tf (not a relabelling), mounting.frame gives the detector
its mounting from tf, and every cloud gets one answer (an empty one when a transform or the inference fails).

In-process: a DetectorNode with a stand-in detector and a stand-in tf buffer (tf2_ros has no wheels here), its
publishers replaced by lists; the frame path (`_process`) runs as the worker thread would run it.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fastpillars_ros.detector import Detections
from fastpillars_ros.mounting import Mounting

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")

BOX = np.array([[10.0, 2.0, -0.8, 4.0, 1.8, 1.5, 0.3]], np.float32)  # one car, lidar frame


class StandInDetector:
    """Answers every cloud with :data:`BOX` (or raises, when ``fail`` is set); records its mounting."""

    def __init__(self, params, cfg):
        self.config = cfg
        self.class_names = list(cfg.class_names)
        self.point_features = list(cfg.point_features)
        self.intensity_scale = cfg.intensity_scale
        self.backend, self.device, self.precision = "torch", "cpu", "fp32"
        self.mounting_source = params.mounting_source()
        self.fail = False
        self.mountings_seen: list = []

    @property
    def mounting(self):
        return getattr(self.mounting_source, "current", self.mounting_source)

    def detect(self, points):
        if self.fail:
            raise RuntimeError("out of memory (stand-in)")
        self.mountings_seen.append(self.mounting_source)
        return Detections(BOX.copy(), np.array([0.9], np.float32), np.array([0]), None, {"total": 1.0},
                          {"num_points_in_range": len(points), "num_pillars": 1})


class StandInTf:
    """``lookup_transform(target, source, ...)`` from a dict of (target, source) -> geometry_msgs Transform."""

    def __init__(self, transforms):
        self.transforms = transforms

    def lookup_transform(self, target, source, _stamp, timeout=None):
        if (target, source) not in self.transforms:
            raise LookupError(f"no transform {target} <- {source}")
        return SimpleNamespace(transform=self.transforms[(target, source)])


def _transform(xyz, rpy):
    from geometry_msgs.msg import Transform

    from fastpillars_ros.pose_sources import quat_from_rpy

    t = Transform()
    t.translation.x, t.translation.y, t.translation.z = xyz
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in quat_from_rpy(*rpy))
    return t


@pytest.fixture
def make_node(monkeypatch):
    from rclpy.parameter import Parameter

    import fastpillars_ros.node as node_module

    monkeypatch.setattr(node_module, "tf2_available", lambda: True)
    rclpy.init()
    made = []

    def make(transforms=None, **params):
        overrides = [Parameter("skip_when_unsubscribed", value=False), Parameter("max_input_age_ms", value=0.0),
                     *(Parameter(k.replace("__", "."), value=v) for k, v in params.items())]
        monkeypatch.setattr(node_module.DetectorNode, "_tf", lambda self: StandInTf(transforms or {}))
        node = node_module.DetectorNode(detector_factory=StandInDetector, parameter_overrides=overrides)
        node.published = []
        node.det_pub = SimpleNamespace(publish=node.published.append, get_subscription_count=lambda: 1)
        node.marker_pub = SimpleNamespace(publish=lambda _m: None, get_subscription_count=lambda: 0)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()
        node.destroy_node()
    rclpy.shutdown()


def _cloud(frame="velodyne"):
    from std_msgs.msg import Header

    from fastpillars_ros.pointcloud import DRIVER_LAYOUTS, make_cloud

    lay = DRIVER_LAYOUTS["velodyne"]
    pts = np.random.default_rng(0).uniform(-20, 20, (2000, 3)).astype(np.float32)
    header = Header(frame_id=frame)
    header.stamp.sec = 100
    return make_cloud({"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]}, lay.fields, lay.point_step, header=header)


def _box(msg):
    d = msg.detections[0]
    p, q = d.bbox.center.position, d.bbox.center.orientation
    return p.x, p.y, p.z, math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def test_output_frame_transforms_the_boxes_instead_of_relabelling(make_node):
    # base_link: the lidar 1.2 m ahead and 1.5 m up, turned 90 degrees left.
    node = make_node({("base_link", "velodyne"): _transform((1.2, 0.0, 1.5), (0.0, 0.0, math.pi / 2))},
                     output_frame="base_link")
    node._process(_cloud(), time.monotonic())
    (msg,) = node.published
    assert msg.header.frame_id == "base_link" and msg.header.stamp.sec == 100
    x, y, z, yaw = _box(msg)
    assert (x, y, z) == pytest.approx((1.2 - 2.0, 10.0, -0.8 + 1.5), abs=1e-5)
    assert yaw == pytest.approx(0.3 + math.pi / 2, abs=1e-5)


def test_output_frame_without_a_transform_answers_empty_and_counts(make_node):
    node = make_node({}, output_frame="map")
    node._process(_cloud(), time.monotonic())
    (msg,) = node.published
    assert msg.header.frame_id == "map" and len(msg.detections) == 0
    assert node.stats.rejected["no_transform"] == 1


def test_mounting_frame_gives_the_detector_the_mounting_from_tf(make_node):
    # base_footprint: the ground under a lidar 0.6 m up, pitched 5 degrees nose down.
    node = make_node({("base_footprint", "velodyne"): _transform((0.3, 0.0, 0.6), (0.0, math.radians(5.0), 0.0))},
                     mounting__frame="base_footprint")
    node._process(_cloud(), time.monotonic())
    (used,) = node.detector.mountings_seen
    assert used.height == pytest.approx(0.6) and used.pitch == pytest.approx(math.radians(5.0))
    assert used.roll == pytest.approx(0.0, abs=1e-9)
    assert len(node.published[0].detections) == 1


def test_failed_inference_still_answers_the_cloud_with_its_header_and_counts(make_node):
    node = make_node()
    node.detector.fail = True
    node._process(_cloud(), time.monotonic())
    (msg,) = node.published
    assert msg.header.frame_id == "velodyne" and msg.header.stamp.sec == 100 and len(msg.detections) == 0
    assert node.stats.counts["errors"] == 1


def test_mounting_parameters_reach_the_detector(make_node):
    node = make_node(mounting__height=0.6, mounting__pitch=0.1)
    assert node.detector.mounting == Mounting(0.6, 0.0, 0.1)


def test_diagnostics_report_the_auto_mounting_estimate(make_node):
    node = make_node(mounting__auto=True)
    status = node._mounting_status(node.params)
    assert status["mounting.source"] == "auto" and status["mounting.auto.last_fit"] == "no fit yet"
