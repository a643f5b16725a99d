"""Pseudo-labels for real scans (self-training): a teacher detector's confident boxes become training labels,
its uncertain ones become ignore boxes, and everything else in the scan is background.

Real KITTI labels cover only the front camera's view, so training masks the rest of each scan out of the heatmap
loss and never sees three quarters of the real background (walls, vegetation, poles) as negatives. With
pseudo-labels the whole scan can be trained on: labelled objects inside the camera's view, the teacher's
confident objects outside it, ignore boxes where the teacher is unsure (a missed object there is not taught as
background) and background elsewhere.

The teacher looks at each scan in several views (:data:`VIEWS`: as recorded, mirrored left/right, turned by 180
degrees, both) and a box's score is the mean over the views (0 in a view that does not find it): an object found
in one view only gets a quarter of its score, so chance detections become ignore boxes, not labels.
All boxes are ours: ``(K, 7)`` ``[x, y, z_center, length, width, height, yaw]`` in the LiDAR frame (m, rad).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["VIEWS", "PseudoLabels", "fuse_views", "outside_half_fov", "pseudo_labels", "view_boxes", "view_points"]

#: Views of a scan the teacher looks at: (mirror left/right, turn by 180 degrees).
VIEWS: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))


def view_points(points: np.ndarray, view: tuple[bool, bool]) -> np.ndarray:
    """``(N, C)`` points (x, y first, LiDAR frame) seen in ``view`` (a copy)."""
    mirror, turn = view
    out = np.array(points, copy=True)
    if mirror:
        out[:, 1] *= -1.0
    if turn:
        out[:, :2] *= -1.0
    return out


def view_boxes(boxes: np.ndarray, view: tuple[bool, bool]) -> np.ndarray:
    """``(K, 7)`` boxes moved by ``view``; every view is its own inverse, so this also brings boxes found in a
    view back to the recorded scan. Yaw wrapped to (-pi, pi]."""
    mirror, turn = view
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 7)
    if mirror:
        out[:, 1] *= -1.0
        out[:, 6] *= -1.0
    if turn:
        out[:, :2] *= -1.0
        out[:, 6] += math.pi
    out[:, 6] = np.angle(np.exp(1j * out[:, 6]))
    return out


def fuse_views(per_view: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], radius: Mapping[int, float]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box list from the teacher's boxes of several views (already brought back to the recorded scan).

    ``per_view``: per view ``(boxes (K, 7), scores (K,), labels (K,) int)``. Greedy by score: the best box not yet
    taken starts a group and takes, from each other view, its best box of the same class whose centre is within
    ``radius[label]`` metres (BEV). A group keeps its first box's geometry and scores the sum of its members'
    scores divided by the number of views. Returns ``(boxes (G, 7), scores (G,), labels (G,))``, scores
    descending."""
    n_views = len(per_view)
    rows = [(float(s), v, k) for v, (_, scores, _) in enumerate(per_view) for k, s in enumerate(scores)]
    rows.sort(key=lambda r: -r[0])
    taken = [np.zeros(len(scores), dtype=bool) for _, scores, _ in per_view]
    out_boxes, out_scores, out_labels = [], [], []
    for score, v, k in rows:
        if taken[v][k]:
            continue
        taken[v][k] = True
        box, label = per_view[v][0][k], int(per_view[v][2][k])
        total = score
        for w, (boxes, scores, labels) in enumerate(per_view):
            if w == v or not len(scores):
                continue
            near = (~taken[w]) & (labels == label) & (
                np.hypot(boxes[:, 0] - box[0], boxes[:, 1] - box[1]) <= radius[label])
            if near.any():
                best = int(np.flatnonzero(near)[np.argmax(scores[near])])
                taken[w][best] = True
                total += float(scores[best])
        out_boxes.append(box)
        out_scores.append(total / n_views)
        out_labels.append(label)
    order = np.argsort(-np.asarray(out_scores, dtype=np.float64), kind="stable")
    return (np.asarray(out_boxes, dtype=np.float64).reshape(-1, 7)[order],
            np.asarray(out_scores, dtype=np.float64)[order], np.asarray(out_labels, dtype=np.int64)[order])


def outside_half_fov(boxes: np.ndarray, half_fov: float) -> np.ndarray:
    """``(K,)`` bool: the box centre's bearing from the sensor is more than ``half_fov`` (rad) off the +x axis
    (the part of a camera-view-labelled scan that has no labels; same wedge as training's mask)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    return np.abs(np.arctan2(b[:, 1], b[:, 0])) > half_fov


@dataclass
class PseudoLabels:
    """A scan's pseudo-labels: ``boxes (K, 7)`` with ``labels (K,)`` class indices and ``scores (K,)``; ``ignored
    (J, 7)`` boxes where the teacher is unsure (neither object nor background in training)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    ignored: np.ndarray


def pseudo_labels(detect: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]], points: np.ndarray,
                  keep: Sequence[float], floor: float, radius: Mapping[int, float],
                  known: np.ndarray | None = None, half_fov: float | None = None) -> PseudoLabels:
    """Pseudo-labels of one scan.

    Args:
        detect: the teacher: ``(N, C)`` points -> ``(boxes (K, 7), scores (K,), labels (K,))``, scores at least
            ``floor``.
        points: ``(N, C)`` the scan (LiDAR frame, x, y, z first).
        keep: per class index, the fused score from which a box is a label; boxes from ``floor`` up to it are
            ignore boxes.
        floor: lowest fused score that still marks an ignore box.
        radius: per class index, the BEV centre distance (m) within which boxes of two views are one object.
        known: ``(M, 7)`` boxes the scan is labelled with (any class, ignored ones included): teacher boxes
            whose centre lies within 2 m of one are dropped, as the label already covers them.
        half_fov: the scan's labels cover the wedge of this half-angle (rad) about +x: only teacher boxes
            outside it are kept (None: the whole scan is pseudo-labelled).
    """
    per_view = []
    for view in VIEWS:
        boxes, scores, labels = detect(view_points(points, view))
        per_view.append((view_boxes(boxes, view), np.asarray(scores, np.float64), np.asarray(labels, np.int64)))
    boxes, scores, labels = fuse_views(per_view, radius)
    use = scores >= floor
    if half_fov is not None:
        use &= outside_half_fov(boxes, half_fov)
    if known is not None and len(known) and len(boxes):
        k = np.asarray(known, dtype=np.float64).reshape(-1, 7)
        d = np.hypot(boxes[:, None, 0] - k[None, :, 0], boxes[:, None, 1] - k[None, :, 1])
        use &= d.min(axis=1) > 2.0
    boxes, scores, labels = boxes[use], scores[use], labels[use]
    sure = scores >= np.asarray(keep, dtype=np.float64)[labels] if len(labels) else np.zeros(0, dtype=bool)
    return PseudoLabels(boxes=boxes[sure], labels=labels[sure], scores=scores[sure], ignored=boxes[~sure])
