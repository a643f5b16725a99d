"""Where the sensor's pose in a fixed frame comes from, for multi-sweep accumulation.

A :class:`PoseSource` answers ``query(stamp_s, frame_id) -> (pose, reason)``: the 4x4 transform that
maps points of the cloud's sensor frame at ``stamp_s`` into the fixed frame (``odom``), or
``(None, reason)`` when it cannot.

* :class:`OdometryPoseSource`: a time-indexed history of ``nav_msgs/Odometry`` poses (the base frame in
  the fixed frame) and a static sensor-to-base transform. The pose at a cloud stamp is interpolated
  between the two odometry samples around it (linear translation, quaternion slerp); a stamp past the
  newest sample by at most ``tolerance_s`` is extrapolated from the last two samples; anything further
  outside the history, or between two samples more than ``max_interval_s`` apart, is refused.
  Messages are parsed from plain objects (attribute access only), so no ROS graph is needed; the node
  subscribes with :func:`make_odometry_callback`.
* :class:`Tf2PoseSource`: ``tf2_ros.Buffer.lookup_transform(fixed_frame, cloud_frame, stamp, timeout)``.
  ``tf2_ros`` is imported only by :func:`make_tf2_source`; the class works with any object that has
  that method (tests use a fake).
* :func:`make_pose_source`: ``auto`` picks tf2 when ``tf2_ros`` is importable and a node is given,
  else odometry.

Quaternions are ``(x, y, z, w)`` (ROS order), unit length, Hamilton product.
"""

from __future__ import annotations

import bisect
import importlib.util
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastpillars_ros.message_codec import stamp_to_seconds

# --------------------------------------------------------------------------------------------------------
# Quaternion and transform math (numpy, float64)
# --------------------------------------------------------------------------------------------------------


def quat_normalize(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion; raises ``ValueError`` for a zero or non-finite one."""
    q = np.asarray(q, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if q.shape != (4,) or not math.isfinite(n) or n < 1e-9:
        raise ValueError(f"not a usable quaternion: {q.tolist()}")
    return q / n


def quat_multiply(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Hamilton product ``a * b`` (apply ``b`` first, then ``a``)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def quat_conjugate(q: Sequence[float]) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]], dtype=np.float64)


def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a (normalised here) quaternion."""
    x, y, z, w = quat_normalize(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Quaternion (w >= 0) of a 3x3 rotation matrix (branch on the largest diagonal term: stable)."""
    r = np.asarray(r, dtype=np.float64)
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
    q = quat_normalize(q)
    return -q if q[3] < 0 else q


def quat_from_axis_angle(axis: Sequence[float], angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    return np.array([*(axis * math.sin(angle / 2)), math.cos(angle / 2)])


def quat_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """ROS convention (fixed axes): ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``."""
    qx = quat_from_axis_angle((1, 0, 0), roll)
    qy = quat_from_axis_angle((0, 1, 0), pitch)
    qz = quat_from_axis_angle((0, 0, 1), yaw)
    return quat_multiply(qz, quat_multiply(qy, qx))


def quat_slerp(q0: Sequence[float], q1: Sequence[float], t: float) -> np.ndarray:
    """Spherical interpolation along the shorter arc; ``t`` outside [0, 1] extrapolates.

    Written as ``q0 * (q0^-1 q1)^t``: the relative rotation's angle is scaled by ``t`` about its axis.
    """
    q0 = quat_normalize(q0)
    q1 = quat_normalize(q1)
    d = quat_multiply(quat_conjugate(q0), q1)
    if d[3] < 0:  # the same rotation the short way round
        d = -d
    v = d[:3]
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        return q0
    half = math.atan2(s, d[3])  # half the relative angle, in [0, pi/2]
    step = np.array([*(v / s * math.sin(t * half)), math.cos(t * half)])
    return quat_normalize(quat_multiply(q0, step))


def make_transform(translation: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """4x4 transform from a translation and an (x, y, z, w) quaternion."""
    out = np.eye(4)
    out[:3, :3] = quat_to_matrix(quaternion)
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def transform_from_xyz_rpy(values: Sequence[float]) -> np.ndarray:
    """4x4 transform from ``(x, y, z, roll, pitch, yaw)`` (metres, radians)."""
    if len(values) != 6:
        raise ValueError(f"expected 6 values (x, y, z, roll, pitch, yaw), got {list(values)}")
    x, y, z, roll, pitch, yaw = (float(v) for v in values)
    return make_transform((x, y, z), quat_from_rpy(roll, pitch, yaw))


def transform_msg_to_matrix(transform: Any) -> np.ndarray:
    """4x4 of a ``geometry_msgs/Transform`` (``translation``, ``rotation``)."""
    t, r = transform.translation, transform.rotation
    return make_transform((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def interpolate_pose(t0: float, p0: Sequence[float], q0: Sequence[float], t1: float, p1: Sequence[float],
                     q1: Sequence[float], t: float) -> tuple[np.ndarray, np.ndarray]:
    """Pose at time ``t`` between (or, outside [t0, t1], beyond) two stamped poses."""
    a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
    p = np.asarray(p0, dtype=np.float64) + a * (np.asarray(p1, dtype=np.float64) - np.asarray(p0, dtype=np.float64))
    return p, quat_slerp(q0, q1, a)


def _frame(name: str) -> str:
    return str(name).lstrip("/")


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------

class PoseSource(ABC):
    """Pose of the cloud's sensor in the fixed frame at a stamp."""

    #: Why the last :meth:`lookup` returned None ("" after a success).
    last_reason: str = ""

    @abstractmethod
    def query(self, stamp_s: float, frame_id: str = "", stamp_ns: int | None = None
              ) -> tuple[np.ndarray | None, str]:
        """``(4x4 sensor-to-fixed transform, "")`` or ``(None, why not)``. Thread-safe.

        ``stamp_ns``: the same stamp as exact integer nanoseconds, when known (a float of a Unix time
        is only good to ~0.2 us; tf2 lookups at the exact stamp of the newest transform need it).
        """

    def lookup(self, stamp_s: float, frame_id: str = "", stamp_ns: int | None = None) -> np.ndarray | None:
        pose, self.last_reason = self.query(stamp_s, frame_id, stamp_ns)
        return pose

    def describe(self) -> str:
        return type(self).__name__


class OdometryPoseSource(PoseSource):
    """Interpolated odometry poses composed with a static sensor-to-base transform.

    Args:
        sensor_to_base: 4x4 transform of sensor points into the odometry's child (base) frame, or
            ``(x, y, z, roll, pitch, yaw)``; None = the sensor is the base frame.
        fixed_frame: expected ``header.frame_id`` of the odometry (empty = accept any); messages from
            another frame are rejected with a reason.
        history_s: odometry older than this behind the newest sample is forgotten.
        tolerance_s: how far a cloud stamp may lie outside the history (beyond the newest sample:
            extrapolated from the last two samples; before the oldest: the oldest pose is held).
        max_interval_s: two samples further apart than this are not interpolated between.
        wait_s: how long :meth:`query` waits for odometry to reach the cloud's stamp (0 = never wait).
    """

    def __init__(self, sensor_to_base: Any = None, fixed_frame: str = "", history_s: float = 5.0,
                 tolerance_s: float = 0.05, max_interval_s: float = 0.5, wait_s: float = 0.0):
        if sensor_to_base is None:
            self.sensor_to_base = np.eye(4)
        elif np.shape(sensor_to_base) == (6,):
            self.sensor_to_base = transform_from_xyz_rpy(sensor_to_base)
        else:
            self.sensor_to_base = np.asarray(sensor_to_base, dtype=np.float64).reshape(4, 4)
        self.fixed_frame = _frame(fixed_frame)
        self.history_s = float(history_s)
        self.tolerance_s = float(tolerance_s)
        self.max_interval_s = float(max_interval_s)
        self.wait_s = float(wait_s)
        self._cv = threading.Condition()
        self._stamps: list[float] = []
        self._positions: list[np.ndarray] = []
        self._quats: list[np.ndarray] = []
        self.received = 0
        self.rejected = 0
        self.last_reject_reason = ""
        self.clears = 0
        self.base_frame = ""

    # --- input ----------------------------------------------------------------------------------------
    def add(self, stamp_s: float, position: Sequence[float], orientation: Sequence[float]) -> str:
        """Add one base pose (position xyz, quaternion xyzw) at ``stamp_s``; returns "" or why it was rejected.

        A stamp more than ``max_interval_s`` (or ``tolerance_s``, the larger) before the newest sample
        (time went backwards, e.g. a bag loop) clears the history first; smaller steps back are inserted
        in order (out-of-order delivery).
        """
        try:
            q = quat_normalize(orientation)
            p = np.asarray(position, dtype=np.float64).reshape(3)
            if not (np.isfinite(p).all() and math.isfinite(stamp_s)):
                raise ValueError("non-finite position or stamp")
        except ValueError as exc:
            return self._reject(f"odometry message rejected: {exc}")
        with self._cv:
            self.received += 1
            if self._stamps and stamp_s < self._stamps[-1] - max(self.max_interval_s, self.tolerance_s):
                self._clear_locked()
            i = bisect.bisect_left(self._stamps, stamp_s)
            if i < len(self._stamps) and self._stamps[i] == stamp_s:
                self._positions[i], self._quats[i] = p, q
            else:
                self._stamps.insert(i, stamp_s)
                self._positions.insert(i, p)
                self._quats.insert(i, q)
            # Forget what is older than the history window (keep at least two samples).
            cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.history_s)
            cut = min(cut, len(self._stamps) - 2)
            if cut > 0:
                del self._stamps[:cut], self._positions[:cut], self._quats[:cut]
            self._cv.notify_all()
        return ""

    def add_msg(self, msg: Any) -> str:
        """Add a ``nav_msgs/Odometry`` (or any object shaped like it); returns "" or why it was rejected."""
        frame = _frame(msg.header.frame_id)
        if self.fixed_frame and frame and frame != self.fixed_frame:
            return self._reject(f"odometry in frame {frame!r} ignored: the fixed frame is {self.fixed_frame!r} "
                                f"(set sweeps.fixed_frame to the odometry's frame)")
        self.base_frame = _frame(getattr(msg, "child_frame_id", ""))
        pose = msg.pose.pose
        p, o = pose.position, pose.orientation
        return self.add(stamp_to_seconds(msg.header.stamp), (p.x, p.y, p.z), (o.x, o.y, o.z, o.w))

    def clear(self) -> None:
        with self._cv:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._stamps.clear()
        self._positions.clear()
        self._quats.clear()
        self.clears += 1

    def _reject(self, reason: str) -> str:
        self.rejected += 1
        self.last_reject_reason = reason
        return reason

    # --- lookup ---------------------------------------------------------------------------------------
    def base_pose(self, stamp_s: float) -> tuple[np.ndarray | None, str]:
        """The base's 4x4 pose in the fixed frame at ``stamp_s`` (no sensor transform), or (None, why)."""
        with self._cv:
            if self.wait_s > 0:
                deadline = time.monotonic() + self.wait_s
                while not self._stamps or self._stamps[-1] < stamp_s:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            stamps = self._stamps
            if not stamps:
                return None, "no odometry received yet"
            first, last, tol = stamps[0], stamps[-1], self.tolerance_s
            if stamp_s < first - tol:
                return None, (f"cloud stamp is {first - stamp_s:.3f} s before the oldest odometry kept "
                              f"(history {self.history_s:g} s, tolerance {tol:g} s)")
            if stamp_s > last + tol:
                return None, (f"newest odometry is {stamp_s - last:.3f} s older than the cloud (tolerance "
                              f"{tol:g} s): odometry late, stopped, or on another clock")
            if len(stamps) == 1 or stamp_s <= first:
                i0 = i1 = 0 if stamp_s <= first else len(stamps) - 1
            elif stamp_s >= last:
                i0, i1 = len(stamps) - 2, len(stamps) - 1
            else:
                i1 = bisect.bisect_right(stamps, stamp_s)
                i0 = i1 - 1
            t0, t1 = stamps[i0], stamps[i1]
            if t1 - t0 > self.max_interval_s:
                return None, (f"odometry has a {t1 - t0:.3f} s gap around the cloud stamp (max_interval_s "
                              f"{self.max_interval_s:g})")
            p, q = interpolate_pose(t0, self._positions[i0], self._quats[i0], t1, self._positions[i1],
                                    self._quats[i1], stamp_s)
        return make_transform(p, q), ""

    def query(self, stamp_s: float, frame_id: str = "", stamp_ns: int | None = None
              ) -> tuple[np.ndarray | None, str]:
        base, reason = self.base_pose(stamp_s)
        if base is None:
            return None, reason
        return base @ self.sensor_to_base, ""

    def describe(self) -> str:
        with self._cv:
            n = len(self._stamps)
            span = self._stamps[-1] - self._stamps[0] if n else 0.0
        return (f"odometry ({self.fixed_frame or 'any frame'} <- {self.base_frame or 'base'}; {n} samples over "
                f"{span:.2f} s; received {self.received}, rejected {self.rejected})")


class Tf2PoseSource(PoseSource):
    """Pose from a tf2 buffer: ``buffer.lookup_transform(fixed_frame, cloud_frame, stamp, timeout=...)``.

    ``buffer`` is a ``tf2_ros.Buffer`` (filled by a ``TransformListener``; see :func:`make_tf2_source`) or
    any object with the same method. ``sensor_frame`` overrides the cloud's ``frame_id``. Any exception
    of the lookup (``tf2.LookupException``, ``ExtrapolationException``, ``ConnectivityException``,
    timeouts) becomes ``(None, reason)``.
    """

    def __init__(self, buffer: Any, fixed_frame: str = "odom", timeout_s: float = 0.05, sensor_frame: str = ""):
        self.buffer = buffer
        self.fixed_frame = _frame(fixed_frame)
        self.timeout_s = float(timeout_s)
        self.sensor_frame = _frame(sensor_frame)
        self.listener: Any = None  # the TransformListener, when make_tf2_source made one (kept alive here)

    def query(self, stamp_s: float, frame_id: str = "", stamp_ns: int | None = None
              ) -> tuple[np.ndarray | None, str]:
        from rclpy.duration import Duration
        from rclpy.time import Time

        source = self.sensor_frame or _frame(frame_id)
        if not source:
            return None, "the cloud has no frame_id to look up"
        stamp = Time(nanoseconds=int(stamp_ns) if stamp_ns is not None else round(stamp_s * 1e9))
        try:
            tf = self.buffer.lookup_transform(self.fixed_frame, source, stamp,
                                              timeout=Duration(nanoseconds=round(self.timeout_s * 1e9)))
        except Exception as exc:  # tf2 raises several exception types; all mean "no pose"
            return None, (f"tf2 lookup {self.fixed_frame} <- {source} at {stamp_s:.3f} s failed: "
                          f"{type(exc).__name__}: {exc}")
        return transform_msg_to_matrix(tf.transform), ""

    def describe(self) -> str:
        return f"tf2 ({self.fixed_frame} <- {self.sensor_frame or 'cloud frame'}, timeout {self.timeout_s:g} s)"


# --------------------------------------------------------------------------------------------------------
# Factories and ROS glue
# --------------------------------------------------------------------------------------------------------

class PoseSourceError(ValueError):
    """A requested pose source cannot be built (the message names the fix)."""


def tf2_available() -> bool:
    """Whether ``tf2_ros`` can be imported here."""
    try:
        return importlib.util.find_spec("tf2_ros") is not None
    except (ImportError, ValueError):
        return False


def make_tf2_source(node: Any, fixed_frame: str, timeout_s: float, sensor_frame: str = "") -> Tf2PoseSource:
    """A :class:`Tf2PoseSource` with a ``tf2_ros.Buffer`` filled by a ``TransformListener`` on ``node``."""
    import tf2_ros

    buffer = tf2_ros.Buffer()
    source = Tf2PoseSource(buffer, fixed_frame, timeout_s, sensor_frame)
    source.listener = tf2_ros.TransformListener(buffer, node)
    return source


def make_pose_source(kind: str, *, node: Any = None, fixed_frame: str = "odom", timeout_s: float = 0.05,
                     sensor_to_base: Any = None, tolerance_s: float = 0.05, max_interval_s: float = 0.5,
                     history_s: float = 5.0) -> PoseSource:
    """``kind``: ``auto`` (tf2 when importable and ``node`` is given, else odometry), ``tf2`` or ``odometry``.

    The odometry source waits up to ``timeout_s`` for odometry to reach a cloud's stamp, like tf2 does.
    The caller subscribes the odometry topic (:func:`make_odometry_callback`) when an
    :class:`OdometryPoseSource` comes back.
    """
    if kind not in ("auto", "tf2", "odometry"):
        raise PoseSourceError(f"unknown pose source {kind!r}; use auto, tf2 or odometry")
    if kind == "tf2" or (kind == "auto" and node is not None and tf2_available()):
        if not tf2_available():
            raise PoseSourceError("pose source 'tf2' needs the tf2_ros Python package, which is not installed; "
                                  "fix: install ros-<distro>-tf2-ros or set sweeps.pose_source to odometry")
        if node is None:
            raise PoseSourceError("pose source 'tf2' needs a ROS node for its TransformListener")
        return make_tf2_source(node, fixed_frame, timeout_s)
    return OdometryPoseSource(sensor_to_base, fixed_frame=fixed_frame, history_s=history_s,
                              tolerance_s=tolerance_s, max_interval_s=max_interval_s, wait_s=timeout_s)


def make_odometry_callback(source: OdometryPoseSource, on_reject: Callable[[str], None] | None = None
                           ) -> Callable[[Any], None]:
    """Subscription callback feeding ``nav_msgs/Odometry`` messages into ``source``.

    ``on_reject(reason)`` is called for a message that was not used (wrong frame, bad quaternion).
    """

    def callback(msg: Any) -> None:
        reason = source.add_msg(msg)
        if reason and on_reject is not None:
            on_reject(reason)

    return callback


def odometry_qos() -> Any:
    """QoS for the odometry subscription: best effort (matches reliable and best-effort publishers alike),
    volatile, keep the last 50 (a burst between two executor turns must not lose samples)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)
