"""Training augmentation, applied consistently to points and boxes (ours, LiDAR frame).

* :func:`global_rotate` about the sensor's z axis (yaw += angle),
* :func:`flip_y` (mirror about the x axis: y -> -y, yaw -> -yaw) and :func:`flip_x` (x -> -x,
  yaw -> pi - yaw; only for ranges symmetric in x: a front-view range has nothing behind the sensor),
* :func:`global_scale` (positions and sizes times s),
* :func:`global_tilt` (pitch and roll about the sensor) and :func:`global_lift` (z shift): the ground is then
  not where the sensor's usual mounting puts it, as on slopes, ramps and other mountings (off by default),
* :func:`paste_objects`: ground-truth sampling, simple form: objects (box + the points inside it) taken
  from other frames are pasted at their original place when their BEV bounding circle is free (no other
  box, ignored box or pasted object there); scene points inside a pasted box are removed first.

All functions return new arrays (inputs are not modified). Random draws come from the caller's
``numpy.random.Generator`` so a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..boxes import points_in_boxes, wrap_angle
from ..mounting import Mounting

__all__ = ["AugmentConfig", "augment", "flip_x", "flip_y", "global_lift", "global_rotate", "global_scale",
           "global_tilt", "paste_objects"]


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = math.pi / 4  # uniform in [-rotation, rotation]
    scale: tuple[float, float] = (0.95, 1.05)
    flip_y: bool = True
    flip_x: bool = False
    tilt: float = 0.0  # pitch and roll each uniform in [-tilt, tilt] (rad)
    lift: float = 0.0  # z shift uniform in [-lift, lift] (m)


def global_rotate(points: np.ndarray, boxes: list[np.ndarray], angle: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rotate points ``(N, >=3)`` and each ``(K, 7)`` box array by ``angle`` (rad, CCW) about z."""
    c, s = math.cos(angle), math.sin(angle)
    p = points.copy()
    x, y = points[:, 0], points[:, 1]
    p[:, 0] = c * x - s * y
    p[:, 1] = s * x + c * y
    out = []
    for b in boxes:
        b = b.copy()
        bx, by = b[:, 0].copy(), b[:, 1].copy()
        b[:, 0] = c * bx - s * by
        b[:, 1] = s * bx + c * by
        b[:, 6] = wrap_angle(b[:, 6] + angle)
        out.append(b)
    return p, out


def flip_y(points: np.ndarray, boxes: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mirror about the x axis: y -> -y, yaw -> -yaw."""
    p = points.copy()
    p[:, 1] = -p[:, 1]
    out = []
    for b in boxes:
        b = b.copy()
        b[:, 1] = -b[:, 1]
        b[:, 6] = wrap_angle(-b[:, 6])
        out.append(b)
    return p, out


def flip_x(points: np.ndarray, boxes: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mirror about the y axis: x -> -x, yaw -> pi - yaw."""
    p = points.copy()
    p[:, 0] = -p[:, 0]
    out = []
    for b in boxes:
        b = b.copy()
        b[:, 0] = -b[:, 0]
        b[:, 6] = wrap_angle(math.pi - b[:, 6])
        out.append(b)
    return p, out


def global_scale(points: np.ndarray, boxes: list[np.ndarray], s: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scale positions (points x, y, z; box centres) and box sizes by ``s``."""
    p = points.copy()
    p[:, :3] *= s
    out = []
    for b in boxes:
        b = b.copy()
        b[:, :6] *= s
        out.append(b)
    return p, out


def global_tilt(points: np.ndarray, boxes: list[np.ndarray], pitch: float, roll: float
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Turn the scene about the sensor by the rotation of a :class:`~fastpillars_ros.mounting.Mounting` with
    this ``pitch`` and ``roll`` (rad): what a sensor so mounted would see of a level scene.

    Points turn exactly; box centres turn with them and boxes stay upright with their yaw (for a few degrees
    the box still holds its points: a 4.5 m car tilted by 2 degrees rises 8 cm at one end).
    """
    # Mounting.rotation R takes that sensor's frame to the level one, so the sensor sees p_level as R^T p_level:
    # for row vectors, p_level @ R.
    rot = Mounting(roll=roll, pitch=pitch).rotation
    p = points.copy()
    p[:, :3] = (points[:, :3].astype(np.float64) @ rot).astype(points.dtype)
    out = []
    for b in boxes:
        b = b.copy()
        b[:, :3] = b[:, :3] @ rot
        out.append(b)
    return p, out


def global_lift(points: np.ndarray, boxes: list[np.ndarray], dz: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shift points and box centres by ``dz`` metres along z."""
    p = points.copy()
    p[:, 2] += dz
    out = []
    for b in boxes:
        b = b.copy()
        b[:, 2] += dz
        out.append(b)
    return p, out


def augment(points: np.ndarray, boxes: list[np.ndarray], rng: np.random.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, list[np.ndarray]]:
    """Random flip(s), rotation, scale, tilt and lift (in that order), same transform for points and every box
    array. Draws the same number of values from ``rng`` whatever the settings (stable streams: tilt and lift
    draw from a generator seeded by the fifth value, so runs without them are unchanged)."""
    u = rng.random(5)
    if cfg.flip_y and u[0] < 0.5:
        points, boxes = flip_y(points, boxes)
    if cfg.flip_x and u[1] < 0.5:
        points, boxes = flip_x(points, boxes)
    if cfg.rotation > 0:
        points, boxes = global_rotate(points, boxes, (2 * u[2] - 1) * cfg.rotation)
    lo, hi = cfg.scale
    if hi > lo or lo != 1.0:
        points, boxes = global_scale(points, boxes, lo + (hi - lo) * u[3])
    if cfg.tilt > 0 or cfg.lift > 0:
        v = np.random.default_rng(int(u[4] * 2**62)).random(3)
        if cfg.tilt > 0:
            points, boxes = global_tilt(points, boxes, (2 * v[0] - 1) * cfg.tilt, (2 * v[1] - 1) * cfg.tilt)
        if cfg.lift > 0:
            points, boxes = global_lift(points, boxes, (2 * v[2] - 1) * cfg.lift)
    return points, boxes


def _radius(boxes: np.ndarray) -> np.ndarray:
    return 0.5 * np.hypot(boxes[:, 3], boxes[:, 4])


def paste_objects(points: np.ndarray, boxes: np.ndarray, labels: np.ndarray, occupied: np.ndarray,
                  donors: list[tuple[np.ndarray, int, np.ndarray]], margin: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste donor objects into a scene.

    Args:
        points: ``(N, C)`` scene points. boxes/labels: the scene's GT ``(K, 7)`` / ``(K,)``.
        occupied: ``(J, 7)`` further boxes that must stay free (e.g. ignored boxes).
        donors: ``(box (7,), label, points (P, C))`` candidates in priority order.
        margin: extra clearance (m) between BEV bounding circles.
    Returns:
        ``(points, boxes, labels)`` with the accepted donors added (their boxes appended in order).
    """
    if not donors:
        return points, boxes, labels
    taken = np.concatenate([boxes.reshape(-1, 7), occupied.reshape(-1, 7)], axis=0)
    accepted: list[int] = []
    cand = np.stack([d[0] for d in donors]).astype(np.float64)
    rc = _radius(cand)
    rt = _radius(taken)
    for i in range(len(donors)):  # loop over a handful of candidates, vectorised over the taken boxes
        ok = True
        if len(taken):
            d = np.hypot(taken[:, 0] - cand[i, 0], taken[:, 1] - cand[i, 1])
            ok = bool(np.all(d > rt + rc[i] + margin))
        if ok and accepted:
            acc = cand[accepted]
            d = np.hypot(acc[:, 0] - cand[i, 0], acc[:, 1] - cand[i, 1])
            ok = bool(np.all(d > rc[accepted] + rc[i] + margin))
        if ok:
            accepted.append(i)
    if not accepted:
        return points, boxes, labels
    new_boxes = cand[accepted]
    inside = np.zeros(len(points), bool)
    reach = rc[accepted] + margin
    lo, hi = new_boxes[:, :2] - reach[:, None], new_boxes[:, :2] + reach[:, None]
    near = np.nonzero((points[:, 0] >= lo[:, 0].min()) & (points[:, 0] <= hi[:, 0].max())
                      & (points[:, 1] >= lo[:, 1].min()) & (points[:, 1] <= hi[:, 1].max()))[0]
    for k in range(len(new_boxes)):  # per pasted box, exact test only on the points near it
        sub = near[(np.abs(points[near, 0] - new_boxes[k, 0]) <= reach[k])
                   & (np.abs(points[near, 1] - new_boxes[k, 1]) <= reach[k])]
        inside[sub[points_in_boxes(points[sub], new_boxes[k:k + 1], margin=margin)[:, 0]]] = True
    pts = np.concatenate([points[~inside]] + [donors[i][2].astype(points.dtype) for i in accepted], axis=0)
    out_boxes = np.concatenate([boxes.reshape(-1, 7), new_boxes.astype(boxes.dtype)], axis=0)
    out_labels = np.concatenate([labels, np.array([donors[i][1] for i in accepted], dtype=labels.dtype)])
    return pts, out_boxes, out_labels
