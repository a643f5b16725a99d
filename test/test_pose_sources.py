"""Pose sources: quaternion math, odometry interpolation and refusal, tf2 with a fake buffer, factory."""

from __future__ import annotations

import math
import sys
import threading
import time
import types

import numpy as np
import pytest
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry

from fastpillars_ros.ros import pose_sources as ps
from fastpillars_ros.ros.pose_sources import (
    OdometryPoseSource,
    PoseSourceError,
    Tf2PoseSource,
    make_odometry_callback,
    make_pose_source,
    make_transform,
    matrix_to_quat,
    quat_from_axis_angle,
    quat_from_rpy,
    quat_multiply,
    quat_slerp,
    quat_to_matrix,
    transform_from_xyz_rpy,
)

RNG = np.random.default_rng(11)


def random_quat() -> np.ndarray:
    q = RNG.normal(size=4)
    return q / np.linalg.norm(q)


def rz(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def textbook_slerp(q0, q1, t):
    """Shoemake's formula, for comparison."""
    q0, q1 = np.asarray(q0), np.asarray(q1)
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    om = math.acos(min(d, 1.0))
    return (math.sin((1 - t) * om) * q0 + math.sin(t * om) * q1) / math.sin(om)


def same_rotation(a, b) -> bool:
    return np.allclose(quat_to_matrix(a), quat_to_matrix(b), atol=1e-9)


def odom_msg(stamp_s: float, xyz, quat, frame="odom", child="base_link") -> Odometry:
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = frame, child
    msg.header.stamp = TimeMsg(sec=int(stamp_s), nanosec=round((stamp_s - int(stamp_s)) * 1e9))
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in xyz)
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


# --- quaternion math ------------------------------------------------------------------------------------

def test_matrix_quaternion_round_trip():
    for _ in range(200):
        q = random_quat()
        r = quat_to_matrix(q)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert same_rotation(matrix_to_quat(r), q)
    for angle in (math.pi, -math.pi + 1e-9):  # the w ~ 0 branches
        for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            q = quat_from_axis_angle(axis, angle)
            assert same_rotation(matrix_to_quat(quat_to_matrix(q)), q)


def test_rpy_convention_is_ros_fixed_axes():
    roll, pitch, yaw = 0.1, -0.2, 0.7
    rx = quat_to_matrix(quat_from_axis_angle((1, 0, 0), roll))
    ry = quat_to_matrix(quat_from_axis_angle((0, 1, 0), pitch))
    np.testing.assert_allclose(quat_to_matrix(quat_from_rpy(roll, pitch, yaw)), rz(yaw) @ ry @ rx, atol=1e-12)
    t = transform_from_xyz_rpy((1, 2, 3, 0, 0, math.pi / 2))
    np.testing.assert_allclose(t @ (1, 0, 0, 1), (1, 3, 3, 1), atol=1e-12)


def test_quaternion_product_composes_rotations():
    a, b = random_quat(), random_quat()
    np.testing.assert_allclose(quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b),
                               atol=1e-12)


def test_slerp_midpoint_about_z_is_mean_yaw():
    q = quat_slerp(quat_from_rpy(0, 0, 0.2), quat_from_rpy(0, 0, 1.0), 0.5)
    np.testing.assert_allclose(quat_to_matrix(q), rz(0.6), atol=1e-12)
    # Across +-pi the short way round: 170 deg and -170 deg meet at 180 deg, not at 0.
    q = quat_slerp(quat_from_rpy(0, 0, math.radians(170)), quat_from_rpy(0, 0, math.radians(-170)), 0.5)
    np.testing.assert_allclose(quat_to_matrix(q), rz(math.pi), atol=1e-12)


def test_slerp_matches_textbook_formula():
    for _ in range(100):
        q0, q1, t = random_quat(), random_quat(), float(RNG.uniform(0, 1))
        assert same_rotation(quat_slerp(q0, q1, t), textbook_slerp(q0, q1, t))
        assert same_rotation(quat_slerp(q0, -q1, t), textbook_slerp(q0, q1, t))  # sign of q1 does not matter
    q = random_quat()
    assert same_rotation(quat_slerp(q, q, 0.3), q)


# --- odometry source ------------------------------------------------------------------------------------

def test_odometry_interpolates_between_the_two_poses_around_the_stamp():
    src = OdometryPoseSource()
    src.add(10.0, (0, 0, 0), quat_from_rpy(0, 0, 0.0))
    src.add(10.1, (1.0, 2.0, 0.4), quat_from_rpy(0, 0, 0.2))
    src.add(10.2, (5.0, 5.0, 5.0), quat_from_rpy(0, 0, 1.0))
    pose, reason = src.query(10.05)
    assert reason == ""
    np.testing.assert_allclose(pose[:3, 3], (0.5, 1.0, 0.2), atol=1e-9)
    np.testing.assert_allclose(pose[:3, :3], rz(0.1), atol=1e-12)
    pose = src.lookup(10.125)  # a quarter of the way into the second interval
    np.testing.assert_allclose(pose[:3, 3], (2.0, 2.75, 1.55), atol=1e-9)
    np.testing.assert_allclose(pose[:3, :3], rz(0.4), atol=1e-12)
    np.testing.assert_allclose(src.lookup(10.1)[:3, 3], (1.0, 2.0, 0.4), atol=1e-12)


def test_odometry_composes_the_sensor_to_base_transform():
    s2b = (1.0, 0.0, 1.8, 0.0, 0.0, math.pi / 2)
    src = OdometryPoseSource(sensor_to_base=s2b)
    base = make_transform((10, 20, 0), quat_from_rpy(0, 0, 0.5))
    src.add(1.0, base[:3, 3], matrix_to_quat(base[:3, :3]))
    pose, _ = src.query(1.0)
    np.testing.assert_allclose(pose, base @ transform_from_xyz_rpy(s2b), atol=1e-12)


def test_odometry_extrapolates_only_within_tolerance():
    src = OdometryPoseSource(tolerance_s=0.05)
    src.add(1.0, (0, 0, 0), (0, 0, 0, 1))
    src.add(1.1, (1, 0, 0), quat_from_rpy(0, 0, 0.1))
    pose, reason = src.query(1.14)
    assert reason == "" and pose[0, 3] == pytest.approx(1.4)
    np.testing.assert_allclose(pose[:3, :3], rz(0.14), atol=1e-12)
    pose, reason = src.query(1.2)
    assert pose is None and "newest odometry is 0.100 s older than the cloud" in reason
    pose, reason = src.query(0.9)
    assert pose is None and "before the oldest odometry" in reason


def test_odometry_refuses_without_data_and_across_gaps():
    src = OdometryPoseSource(max_interval_s=0.2)
    assert src.query(1.0) == (None, "no odometry received yet")
    src.add(1.0, (0, 0, 0), (0, 0, 0, 1))
    src.add(1.5, (1, 0, 0), (0, 0, 0, 1))
    pose, reason = src.query(1.2)
    assert pose is None and "0.500 s gap" in reason


def test_odometry_history_is_bounded_and_a_time_jump_back_clears_it():
    src = OdometryPoseSource(history_s=1.0)
    for k in range(100):
        src.add(100.0 + 0.05 * k, (k, 0, 0), (0, 0, 0, 1))
    assert len(src._stamps) == 21 and src._stamps[0] == pytest.approx(103.95)
    src.add(100.0 + 0.05 * 95 + 0.025, (0, 0, 0), (0, 0, 0, 1))  # late but in the window: inserted in order
    assert src.clears == 0 and src._stamps == sorted(src._stamps) and len(src._stamps) == 22
    src.add(50.0, (0, 0, 0), (0, 0, 0, 1))  # bag loop
    assert src.clears == 1 and src._stamps == [50.0]


def test_odometry_messages_are_parsed_and_checked():
    src = OdometryPoseSource(fixed_frame="odom")
    assert src.add_msg(odom_msg(5.25, (1, 2, 3), quat_from_rpy(0, 0, 0.3))) == ""
    assert src.base_frame == "base_link"
    pose, _ = src.query(5.25)
    np.testing.assert_allclose(pose[:3, 3], (1, 2, 3), atol=1e-12)
    assert "frame 'map' ignored" in src.add_msg(odom_msg(5.3, (0, 0, 0), (0, 0, 0, 1), frame="map"))
    assert "quaternion" in src.add_msg(odom_msg(5.3, (0, 0, 0), (0, 0, 0, 0)))
    assert src.rejected == 2 and src.received == 1
    assert src.add_msg(odom_msg(5.3, (0, 0, 0), (0, 0, 0, 1), frame="/odom")) == ""  # leading slash is fine


def test_odometry_callback_feeds_the_source_and_reports_rejects():
    src = OdometryPoseSource(fixed_frame="odom")
    rejects = []
    cb = make_odometry_callback(src, rejects.append)
    cb(odom_msg(1.0, (0, 0, 0), (0, 0, 0, 1)))
    cb(odom_msg(1.1, (0, 0, 0), (0, 0, 0, 1), frame="map"))
    assert src.received == 1 and len(rejects) == 1


def test_odometry_lookup_waits_for_late_odometry():
    src = OdometryPoseSource(wait_s=2.0)
    src.add(1.0, (0, 0, 0), (0, 0, 0, 1))

    def late():
        time.sleep(0.1)
        src.add(1.1, (1, 0, 0), (0, 0, 0, 1))

    thread = threading.Thread(target=late)
    thread.start()
    t0 = time.monotonic()
    pose, reason = src.query(1.1)
    thread.join()
    assert reason == "" and pose[0, 3] == pytest.approx(1.0) and time.monotonic() - t0 < 1.5


# --- tf2 source -----------------------------------------------------------------------------------------

class FakeTfBuffer:
    """Stands in for tf2_ros.Buffer: same lookup_transform signature, records the calls."""

    def __init__(self, transform: np.ndarray | None = None, error: Exception | None = None):
        self.transform, self.error, self.calls = transform, error, []

    def lookup_transform(self, target_frame, source_frame, time, timeout=None):
        self.calls.append((target_frame, source_frame, time, timeout))
        if self.error is not None:
            raise self.error
        msg = TransformStamped()
        msg.header.frame_id, msg.child_frame_id = target_frame, source_frame
        q = matrix_to_quat(self.transform[:3, :3])
        t = msg.transform
        t.translation.x, t.translation.y, t.translation.z = (float(v) for v in self.transform[:3, 3])
        t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in q)
        return msg


def test_tf2_source_looks_up_fixed_frame_from_cloud_frame_at_the_stamp():
    from rclpy.duration import Duration
    from rclpy.time import Time

    expected = make_transform((3, -4, 1.8), quat_from_rpy(0.01, 0.02, 2.0))
    buf = FakeTfBuffer(expected)
    src = Tf2PoseSource(buf, fixed_frame="odom", timeout_s=0.05)
    pose, reason = src.query(1_700_000_000.123456789, "lidar_top")
    assert reason == ""
    np.testing.assert_allclose(pose, expected, atol=1e-12)
    target, source, stamp, timeout = buf.calls[0]
    assert (target, source) == ("odom", "lidar_top")
    assert isinstance(stamp, Time) and abs(stamp.nanoseconds - 1_700_000_000_123_456_789) < 512
    assert isinstance(timeout, Duration) and timeout.nanoseconds == 50_000_000
    src.query(1_700_000_000.123456789, "lidar_top", stamp_ns=1_700_000_000_123_456_789)
    assert buf.calls[1][2].nanoseconds == 1_700_000_000_123_456_789  # the header's exact stamp


def test_tf2_source_turns_lookup_errors_into_reasons():
    class ExtrapolationException(Exception):
        pass

    src = Tf2PoseSource(FakeTfBuffer(error=ExtrapolationException("would require extrapolation into the future")),
                        fixed_frame="odom")
    pose, reason = src.query(10.0, "velodyne")
    assert pose is None and "ExtrapolationException" in reason and "odom <- velodyne" in reason
    assert src.lookup(10.0, "velodyne") is None and src.last_reason == reason
    assert Tf2PoseSource(FakeTfBuffer(np.eye(4))).query(1.0, "")[0] is None  # no frame to look up
    override = Tf2PoseSource(FakeTfBuffer(np.eye(4)), sensor_frame="lidar")
    override.query(1.0, "other")
    assert override.buffer.calls[0][1] == "lidar"


# --- factory --------------------------------------------------------------------------------------------

def test_factory_falls_back_to_odometry_without_tf2(monkeypatch):
    monkeypatch.setattr(ps, "tf2_available", lambda: False)
    src = make_pose_source("auto", node=object(), fixed_frame="odom", sensor_to_base=(0, 0, 1, 0, 0, 0))
    assert isinstance(src, OdometryPoseSource) and src.sensor_to_base[2, 3] == 1.0
    with pytest.raises(PoseSourceError, match="tf2_ros"):
        make_pose_source("tf2", node=object())
    with pytest.raises(PoseSourceError, match="unknown"):
        make_pose_source("gps")


def test_factory_picks_tf2_when_importable(monkeypatch):
    fake = types.ModuleType("tf2_ros")

    class Listener:
        def __init__(self, buffer, node):
            self.buffer, self.node = buffer, node

    fake.Buffer = FakeTfBuffer
    fake.TransformListener = Listener
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)
    monkeypatch.setattr(ps, "tf2_available", lambda: True)
    node = object()
    src = make_pose_source("auto", node=node, fixed_frame="map", timeout_s=0.1)
    assert isinstance(src, Tf2PoseSource) and src.fixed_frame == "map" and src.listener.node is node
    assert src.listener.buffer is src.buffer
    assert isinstance(make_pose_source("odometry", node=node), OdometryPoseSource)
    assert isinstance(make_pose_source("auto", node=None), OdometryPoseSource)
