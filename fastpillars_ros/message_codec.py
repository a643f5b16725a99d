"""ROS message contents without ROS: header stamps, yaw quaternions and the ``vision_msgs/Detection3DArray``
codec, written once for any message classes (rclpy's generated ones in ``ros/messages.py``, the rosbags
dataclasses in ``bags.py``).

Reading works on any object shaped like the message (attribute access only); writing takes the message
classes as a :class:`DetectionTypes`. Nothing here imports rclpy or a ``*_msgs`` package.

Detections: boxes ``[x, y, z_center, length, width, height, yaw]`` (REP 103, metres, radians about +z, in the
header's frame). Each Detection3D carries the array's header, one hypothesis (``class_id`` = class *name*,
score), ``id`` = its index in the array as a string, pose = ``bbox.center`` (yaw as a quaternion about z),
``bbox.size`` = (length, width, height).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DETECTION_TYPE_NAMES", "NS_PER_S", "DetectionTypes", "decode_detections", "encode_detections",
           "ns_to_stamp", "quaternion_to_yaw", "stamp_to_ns", "stamp_to_seconds", "yaw_to_quaternion"]

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time``-shaped stamp (``sec``, ``nanosec``) as exact integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_to_seconds(stamp: Any) -> float:
    """A ``builtin_interfaces/Time``-shaped stamp in seconds as a float (sub-microsecond precision is lost)."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def ns_to_stamp(stamp_ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` of a time in ns, nanosec in [0, 1e9) (also for times before 1970)."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return sec, nanosec


def yaw_to_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """Rotation about +z by ``yaw`` radians as a unit quaternion ``(x, y, z, w)``."""
    half = 0.5 * float(yaw)
    return 0.0, 0.0, math.sin(half), math.cos(half)


def quaternion_to_yaw(q: Any) -> float:
    """Yaw in [-pi, pi) of a quaternion with ``x, y, z, w`` attributes (roll and pitch are ignored)."""
    yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
    return (yaw + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class DetectionTypes:
    """The message classes :func:`encode_detections` builds (every field is passed by keyword)."""

    Detection3DArray: Any
    Detection3D: Any
    ObjectHypothesisWithPose: Any
    ObjectHypothesis: Any
    BoundingBox3D: Any
    PoseWithCovariance: Any
    Pose: Any
    Point: Any
    Quaternion: Any
    Vector3: Any

    @classmethod
    def from_lookup(cls, lookup: Callable[[str], Any]) -> DetectionTypes:
        """The classes from ``lookup("vision_msgs/msg/Detection3D")`` and so on (ROS type names)."""
        return cls(**{name: lookup(ros_name) for name, ros_name in DETECTION_TYPE_NAMES.items()})


#: DetectionTypes field -> ROS message type.
DETECTION_TYPE_NAMES = {
    **{n: f"vision_msgs/msg/{n}" for n in ("Detection3DArray", "Detection3D", "ObjectHypothesisWithPose",
                                          "ObjectHypothesis", "BoundingBox3D")},
    **{n: f"geometry_msgs/msg/{n}" for n in ("PoseWithCovariance", "Pose", "Point", "Quaternion", "Vector3")},
}


def encode_detections(types: DetectionTypes, boxes: np.ndarray, scores: Sequence[float], names: Sequence[str],
                      header: Any) -> Any:
    """A Detection3DArray of ``boxes`` (K, 7), ``scores`` (K,) and class ``names`` (K,) with ``header``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    if not (len(boxes) == len(scores) == len(names)):
        raise ValueError(f"boxes ({len(boxes)}), scores ({len(scores)}) and names ({len(names)}) differ in length")
    t = types
    detections = []
    for i, box in enumerate(boxes):
        qx, qy, qz, qw = yaw_to_quaternion(box[6])
        pose = t.Pose(position=t.Point(x=float(box[0]), y=float(box[1]), z=float(box[2])),
                      orientation=t.Quaternion(x=qx, y=qy, z=qz, w=qw))
        hypothesis = t.ObjectHypothesisWithPose(
            hypothesis=t.ObjectHypothesis(class_id=str(names[i]), score=float(scores[i])),
            pose=t.PoseWithCovariance(pose=pose, covariance=np.zeros(36)))
        size = t.Vector3(x=float(box[3]), y=float(box[4]), z=float(box[5]))
        bbox = t.BoundingBox3D(center=pose, size=size)
        detections.append(t.Detection3D(header=header, results=[hypothesis], bbox=bbox, id=str(i)))
    return t.Detection3DArray(header=header, detections=detections)


def decode_detections(msg: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(boxes (K, 7) float64, scores (K,), class names)`` of a Detection3DArray-shaped message; each
    detection's best hypothesis (an empty ``results`` gives score 0 and name "")."""
    k = len(msg.detections)
    boxes = np.zeros((k, 7))
    scores = np.zeros(k)
    names: list[str] = []
    for i, det in enumerate(msg.detections):
        c, s = det.bbox.center, det.bbox.size
        boxes[i] = (c.position.x, c.position.y, c.position.z, s.x, s.y, s.z, quaternion_to_yaw(c.orientation))
        if det.results:
            best = max(det.results, key=lambda r: r.hypothesis.score)
            scores[i] = best.hypothesis.score
            names.append(str(best.hypothesis.class_id))
        else:
            names.append("")
    return boxes, scores, names
