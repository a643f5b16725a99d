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

    from fastpillars_ros.ros.pose_sources import quat_from_rpy

    t = Transform()
    t.translation.x, t.translation.y, t.translation.z = xyz
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in quat_from_rpy(*rpy))
    return t


@pytest.fixture
def make_node(monkeypatch):
    from rclpy.parameter import Parameter

    import fastpillars_ros.ros.node as node_module

    monkeypatch.setattr(node_module, "tf2_available", lambda: True)
    rclpy.init()
    made = []

    def make(transforms=None, **params):
        values = {"skip_when_unsubscribed": False, "max_input_age_ms": 0.0} | params
        overrides = [Parameter(k.replace("__", "."), value=v) for k, v in values.items()]
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

    from fastpillars_ros.pointcloud import DRIVER_LAYOUTS
    from fastpillars_ros.ros.cloud_messages import make_cloud

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


# --- logging bridge, clock skew, sweep history -------------------------------------------------------------

class Recorder:
    """Stands in for the node's rclpy logger."""

    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))

    def error(self, text):
        self.lines.append(("error", text))


def test_library_records_reach_the_node_logger_throttled_by_kind(make_node, monkeypatch):
    import logging

    node = make_node(warning_period=60.0)
    recorder = Recorder()
    monkeypatch.setattr(node, "get_logger", lambda: recorder)
    lib = logging.getLogger("fastpillars_ros.detector")
    for n in (400_000, 500_000):
        lib.warning("frame has %d points, more than max_points=%d", n, 300_000)
    lib.info("TensorRT engine built in %.1f s", 12.0)
    assert recorder.lines == [("warning", "frame has 400000 points, more than max_points=300000"),
                              ("info", "TensorRT engine built in 12.0 s")]


def test_closing_the_node_gives_library_records_back_to_logging(make_node):
    import logging

    node = make_node()
    lib = logging.getLogger("fastpillars_ros")
    assert any(h is node._log_bridge for h in lib.handlers)
    node.close()
    assert not any(h is node._log_bridge for h in lib.handlers) and lib.propagate


def test_a_cloud_stamped_in_the_future_is_processed_and_reported(make_node):
    node = make_node()
    msg = _cloud()
    future = node.get_clock().now().nanoseconds + 5_000_000_000
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(future, 1_000_000_000)
    node._process(msg, time.monotonic())
    assert len(node.published[0].detections) == 1
    assert node.stats.notes["future_stamp"] == 1


class SweepRecorder:
    """Stands in for the node's SweepInput: records what enters the history and what is run."""

    def __init__(self):
        self.added, self.processed = [], []
        self.buffer = SimpleNamespace(num_sweeps=3, last_info=SimpleNamespace(skipped=""))

    def add(self, points, header):
        self.added.append(header.stamp.sec)
        return True

    def process(self, points, header):
        self.processed.append(header.stamp.sec)
        return points

    def status(self):
        return {}


def test_superseded_and_unlistened_clouds_still_enter_the_sweep_history(make_node):
    node = make_node()
    node.sweeps = SweepRecorder()
    with node._cv:  # hold the worker: three clouds arrive while it is busy
        for sec in (1, 2, 3):
            msg = _cloud()
            msg.header.stamp.sec = sec
            node._on_cloud(msg)
    deadline = time.time() + 30
    while node.sweeps.processed != [3] and time.time() < deadline:
        time.sleep(0.05)
    # Cloud 1 falls out of the waiting list (as long as the history; one here: the node was built without sweeps).
    assert node.sweeps.added == [2]
    assert node.sweeps.processed == [3]


def test_clouds_skipped_while_nobody_listens_still_enter_the_sweep_history(make_node):
    node = make_node(skip_when_unsubscribed=True)
    node.sweeps = SweepRecorder()
    node.det_pub.get_subscription_count = lambda: 0
    node._process(_cloud(), time.monotonic())
    assert node.sweeps.added == [100] and node.sweeps.processed == [] and node.published == []


def test_the_ready_line_names_the_published_score_per_class(make_node, monkeypatch):
    import fastpillars_ros.ros.node as node_module

    recorder = Recorder()
    monkeypatch.setattr(node_module.DetectorNode, "get_logger", lambda self: recorder)
    make_node(score_threshold=0.45, score_thresholds__cyclist=0.3)
    (ready,) = [text for level, text in recorder.lines if text.startswith("ready:")]
    assert "score thresholds car=0.45, pedestrian=0.45, cyclist=0.3," in ready
