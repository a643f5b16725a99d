"""Detections <-> ROS messages: ``vision_msgs/Detection3DArray`` and RViz ``visualization_msgs/MarkerArray``.

Boxes use the package-wide convention ``[x, y, z_center, length, width, height, yaw]`` (REP 103: metres in
the frame of the input cloud, yaw in radians counter-clockwise from +x about +z, length along the heading).
Output messages copy the input header, and ``class_id`` is the class *name* so that vision_msgs RViz
plugins and downstream consumers see meaningful labels. The Detection3DArray layout itself (and the rosbags
twin in ``bags.py``) is :mod:`fastpillars_ros.message_codec`; class colours are :mod:`fastpillars_ros.colors`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from fastpillars_ros import message_codec as codec
from fastpillars_ros.colors import class_color

# rclpy's generated classes for the one Detection3DArray codec (message_codec), looked up by ROS type name.
_TYPES = codec.DetectionTypes.from_lookup(
    lambda ros_name: getattr(importlib.import_module(ros_name.split("/")[0] + ".msg"), ros_name.split("/")[-1]))

# Corners of a unit box (centre at the origin, extents 1) and the 12 edges between them, in box axes.
_UNIT_CORNERS = np.array(
    [[sx, sy, sz] for sz in (-0.5, 0.5) for sx, sy in ((0.5, 0.5), (0.5, -0.5), (-0.5, -0.5), (-0.5, 0.5))],
    dtype=np.float64,
)
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def yaw_to_quaternion(yaw: float) -> Quaternion:
    """Rotation about +z by ``yaw`` radians as a ``geometry_msgs/Quaternion``."""
    x, y, z, w = codec.yaw_to_quaternion(yaw)
    return Quaternion(x=x, y=y, z=z, w=w)


def _check_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"boxes must have shape (K, 7) [x, y, z, l, w, h, yaw], got {boxes.shape}")
    k = boxes.shape[0]
    if scores.shape[0] != k or labels.shape[0] != k:
        raise ValueError(f"boxes ({k}), scores ({scores.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    if k and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must index class_names (0..{len(class_names) - 1}), "
                         f"got {labels.min()}..{labels.max()}")
    return boxes, scores, labels.astype(np.int64)


def _box_pose(box: np.ndarray) -> Pose:
    position = Point(x=float(box[0]), y=float(box[1]), z=float(box[2]))
    return Pose(position=position, orientation=yaw_to_quaternion(box[6]))


def detections_to_msg(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                      header: Header) -> Detection3DArray:
    """Build a ``vision_msgs/Detection3DArray``.

    Args:
        boxes: (K, 7) ``[x, y, z_center, length, width, height, yaw]`` in ``header.frame_id``, metres/radians.
        scores: (K,) confidence in [0, 1].
        labels: (K,) integer index into ``class_names``.
        class_names: class name per label id; written to ``hypothesis.class_id``.
        header: the input cloud's header (stamp and frame), copied to the array and every detection.

    Each detection carries one hypothesis; its pose equals ``bbox.center`` (yaw as a quaternion about z)
    and ``bbox.size`` is (length, width, height).
    """
    boxes, scores, labels = _check_detections(boxes, scores, labels, class_names)
    return codec.encode_detections(_TYPES, boxes, scores, [class_names[k] for k in labels], header)


def msg_to_detections(msg: Detection3DArray, class_names: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`detections_to_msg`: (boxes (K, 7) float64, scores (K,), labels (K,) int64).

    Uses each detection's best hypothesis. A class name not in ``class_names`` raises ``ValueError``.
    """
    index = {name: i for i, name in enumerate(class_names)}
    boxes, scores, names = codec.decode_detections(msg)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"class_id {unknown[0]!r} is not one of {list(class_names)}")
    return boxes, scores, np.array([index[n] for n in names], dtype=np.int64)


def detections_to_markers(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                          class_names: Sequence[str], header: Header, *, line_width: float = 0.08,
                          lifetime_s: float = 0.0) -> MarkerArray:
    """RViz markers for detections: a DELETEALL first (so no stale boxes survive a frame), then per
    detection a wireframe box (``LINE_LIST`` in the box's own axes), a heading arrow from the centre to
    the front face, and a text label "class score" above the box, all coloured by class.

    Args are as for :func:`detections_to_msg`; ``lifetime_s`` > 0 makes markers expire on their own when
    the detector stops publishing.
    """
    boxes, scores, labels = _check_detections(boxes, scores, labels, class_names)
    lifetime = Duration(sec=int(lifetime_s), nanosec=round((lifetime_s % 1.0) * 1e9))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for i in range(boxes.shape[0]):
        box = boxes[i]
        name = class_names[labels[i]]
        r, g, b = class_color(name)
        color = ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0)
        pose = _box_pose(box)
        corners = _UNIT_CORNERS * box[3:6]
        wire = Marker(header=header, ns="boxes", id=i, type=Marker.LINE_LIST, action=Marker.ADD, pose=pose,
                      scale=Vector3(x=line_width), color=color, lifetime=lifetime)
        wire.points = [Point(x=float(corners[j][0]), y=float(corners[j][1]), z=float(corners[j][2]))
                       for edge in _EDGES for j in edge]
        arrow = Marker(header=header, ns="headings", id=i, type=Marker.ARROW, action=Marker.ADD, pose=pose,
                       scale=Vector3(x=line_width * 1.5, y=line_width * 3.0, z=0.0), color=color, lifetime=lifetime)
        arrow.points = [Point(), Point(x=float(box[3]) * 0.5 + 0.5)]
        text_pose = Pose(position=Point(x=float(box[0]), y=float(box[1]), z=float(box[2] + box[5] * 0.5 + 0.4)))
        text = Marker(header=header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      pose=text_pose, scale=Vector3(z=0.6), color=color, lifetime=lifetime,
                      text=f"{name} {float(scores[i]):.2f}")
        markers += [wire, arrow, text]
    return MarkerArray(markers=markers)
