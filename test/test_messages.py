"""Detections -> vision_msgs/Detection3DArray and RViz markers, and back."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from fastpillars_ros.colors import class_color
from fastpillars_ros.message_codec import quaternion_to_yaw
from fastpillars_ros.ros.messages import (
    detections_to_markers,
    detections_to_msg,
    msg_to_detections,
    yaw_to_quaternion,
)

CLASSES = ("car", "pedestrian", "cyclist")
UPSTREAM_DETECTION3DARRAY_HASH = "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018"


@pytest.fixture
def header() -> Header:
    return Header(stamp=Time(sec=1700000000, nanosec=123456789), frame_id="velodyne")


@pytest.fixture
def detections():
    boxes = np.array([[10.0, -2.0, -0.8, 4.2, 1.8, 1.5, 0.3],
                      [5.5, 3.0, -0.9, 0.6, 0.7, 1.75, -3.1],
                      [20.0, 1.0, -1.0, 1.8, 0.6, 1.7, 3.1]])
    return boxes, np.array([0.91, 0.42, 0.66]), np.array([0, 1, 2])


def test_built_detection3darray_type_hash_equals_upstream_vision_msgs():
    import vision_msgs

    share = [Path(p) / "share" / "vision_msgs" for p in (sys.prefix, *Path(vision_msgs.__file__).parents)]
    desc = next(p / "msg" / "Detection3DArray.json" for p in share if (p / "msg" / "Detection3DArray.json").is_file())
    hashes = {h["type_name"]: h["hash_string"] for h in json.loads(desc.read_text())["type_hashes"]}
    assert hashes["vision_msgs/msg/Detection3DArray"] == UPSTREAM_DETECTION3DARRAY_HASH


def test_detection_array_copies_the_input_header(header, detections):
    msg = detections_to_msg(*detections, CLASSES, header)
    assert msg.header == header
    assert all(d.header == header for d in msg.detections)


def test_each_detection_has_one_named_hypothesis_with_the_score(header, detections):
    msg = detections_to_msg(*detections, CLASSES, header)
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == ["car", "pedestrian", "cyclist"]
    assert [d.results[0].hypothesis.score for d in msg.detections] == pytest.approx([0.91, 0.42, 0.66])
    assert all(len(d.results) == 1 for d in msg.detections)


def test_hypothesis_pose_equals_bbox_centre_and_size_is_length_width_height(header, detections):
    msg = detections_to_msg(*detections, CLASSES, header)
    det = msg.detections[0]
    assert det.results[0].pose.pose == det.bbox.center
    assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == (4.2, 1.8, 1.5)
    q = det.bbox.center.orientation
    assert (q.x, q.y) == (0.0, 0.0)
    assert q.z == pytest.approx(math.sin(0.15)) and q.w == pytest.approx(math.cos(0.15))


def test_message_round_trip_returns_the_boxes_with_yaw_wrapped(header, detections):
    boxes, scores, labels = detections
    boxes = boxes.copy()
    boxes[0, 6] = 0.3 + 4 * math.pi  # yaw of any magnitude comes back wrapped to [-pi, pi)
    boxes[1, 6] = -math.pi
    out_boxes, out_scores, out_labels = msg_to_detections(detections_to_msg(boxes, scores, labels, CLASSES, header),
                                                          CLASSES)
    expected = boxes.copy()
    expected[:, 6] = (expected[:, 6] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(out_boxes[:, :6], expected[:, :6])
    yaw_err = (out_boxes[:, 6] - expected[:, 6] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(yaw_err, 0.0, atol=1e-9)
    assert np.all((out_boxes[:, 6] >= -math.pi) & (out_boxes[:, 6] < math.pi))
    np.testing.assert_allclose(out_scores, scores)
    np.testing.assert_array_equal(out_labels, labels)


@pytest.mark.parametrize("yaw", [0.0, 0.5, -2.0, math.pi - 1e-6, -math.pi, 7.0, -100.0])
def test_yaw_quaternion_round_trip(yaw):
    wrapped = (yaw + math.pi) % (2 * math.pi) - math.pi
    err = (quaternion_to_yaw(yaw_to_quaternion(yaw)) - wrapped + math.pi) % (2 * math.pi) - math.pi
    assert abs(err) < 1e-9


def test_empty_detections_give_an_empty_array_with_the_header(header):
    msg = detections_to_msg(np.zeros((0, 7)), np.zeros(0), np.zeros(0, dtype=int), CLASSES, header)
    assert msg.header == header and msg.detections == []
    markers = detections_to_markers(np.zeros((0, 7)), np.zeros(0), np.zeros(0, dtype=int), CLASSES, header)
    assert [m.action for m in markers.markers] == [Marker.DELETEALL]


def test_bad_detection_arrays_are_rejected_with_the_reason(header):
    with pytest.raises(ValueError, match=r"shape \(K, 7\)"):
        detections_to_msg(np.zeros((2, 6)), np.zeros(2), np.zeros(2, dtype=int), CLASSES, header)
    with pytest.raises(ValueError, match="differ in length"):
        detections_to_msg(np.zeros((2, 7)), np.zeros(3), np.zeros(2, dtype=int), CLASSES, header)
    with pytest.raises(ValueError, match="labels must index class_names"):
        detections_to_msg(np.zeros((1, 7)), np.zeros(1), np.array([3]), CLASSES, header)


def test_markers_start_with_deleteall_then_box_arrow_and_label_per_detection(header, detections):
    markers = detections_to_markers(*detections, CLASSES, header).markers
    assert markers[0].action == Marker.DELETEALL
    body = markers[1:]
    assert len(body) == 3 * 3
    assert [m.type for m in body[:3]] == [Marker.LINE_LIST, Marker.ARROW, Marker.TEXT_VIEW_FACING]
    assert all(m.header == header for m in markers)
    assert body[2].text == "car 0.91"
    assert len({(m.ns, m.id) for m in body}) == len(body)


def test_wireframe_box_has_twelve_edges_spanning_the_box_size(header, detections):
    wire = detections_to_markers(*detections, CLASSES, header).markers[1]
    pts = np.array([(p.x, p.y, p.z) for p in wire.points])
    assert pts.shape == (24, 3)
    np.testing.assert_allclose(pts.max(0) - pts.min(0), [4.2, 1.8, 1.5])
    assert wire.pose == detections_to_msg(*detections, CLASSES, header).detections[0].bbox.center


def test_markers_are_coloured_by_class(header, detections):
    body = detections_to_markers(*detections, CLASSES, header).markers[1:]
    colours = [(m.color.r, m.color.g, m.color.b) for m in body[::3]]
    assert len(set(colours)) == 3
    assert all(m.color.a == 1.0 for m in body)
    assert class_color("forklift") == class_color("forklift") != class_color("car")


def test_node_and_bag_detection_messages_have_one_layout(header, detections):
    from fastpillars_ros import bags

    boxes, scores, labels = detections
    names = [CLASSES[k] for k in labels]
    node = detections_to_msg(boxes, scores, labels, CLASSES, header)
    bag = bags.detections_message(boxes, scores, names, 1700000000123456789, "velodyne")
    assert [d.id for d in node.detections] == [d.id for d in bag.detections] == ["0", "1", "2"]
    for a, b in zip(node.detections, bag.detections, strict=True):
        assert (a.bbox.center.orientation.z, a.bbox.center.orientation.w) == (
            b.bbox.center.orientation.z, b.bbox.center.orientation.w)
        assert a.results[0].pose.pose == a.bbox.center and list(b.results[0].pose.covariance) == [0.0] * 36
        assert (a.results[0].hypothesis.class_id, a.results[0].hypothesis.score) == (
            b.results[0].hypothesis.class_id, b.results[0].hypothesis.score)


def test_rviz_markers_and_pictures_colour_every_class_alike(header):
    from fastpillars_ros.tools import viz

    names = ("car", "pedestrian", "forklift")
    markers = detections_to_markers(np.tile([0.0, 0, 0, 1, 1, 1, 0], (3, 1)), np.ones(3), np.arange(3), names,
                                    header).markers[1::3]
    assert [(m.color.r, m.color.g, m.color.b) for m in markers] == [viz.class_color(n) for n in names]
