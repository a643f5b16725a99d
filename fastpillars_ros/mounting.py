"""Sensor mounting: where the LiDAR sits relative to the ground the model was trained on (ROS-free).

The network learnt its objects from a sensor a fixed height above flat ground with level axes (KITTI's
HDL-64: 1.73 m, level; the simulator uses the same; :attr:`ModelConfig.sensor_height`). A lidar on a small
robot at 0.5 m, on a truck at 2.5 m, or pitched down a few degrees puts the ground where the network never
saw it. :class:`Mounting` states the real pose and the Detector moves every cloud into the model's frame
before pillarization and moves the boxes back (:func:`points_to_model`, :func:`boxes_to_cloud`).

Convention (REP 103: x forward, y left, z up; angles in radians). With ``R = Rx(roll) @ Ry(pitch)``
(pitch positive = nose down), a point ``p`` in the cloud's frame lies at ``R p + (0, 0, height)`` in a
ground-aligned frame whose ``z = 0`` is the ground below the sensor. The model's frame is that
ground-aligned frame shifted down by the model's training height, so

    p_model = R p + (0, 0, height - model_height).

``height = 0`` means "the model's own height" (no vertical shift). Heading and the sensor's horizontal
position are kept: the model is sensor-centred, only "up" and the height above the ground are corrected.

:func:`estimate_ground` fits the ground plane (RANSAC on the lowest point of each ground cell, then a
least-squares refit of the points near that plane) and returns the mounting it implies with quality figures;
:class:`AutoMounting` runs it on a stream of clouds, keeps the first good estimate and refines it slowly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Mounting:
    """The sensor's pose relative to the ground below it.

    Attributes:
        height: sensor origin above the ground [m]; 0 = the model's training height (no change).
        roll: rotation about the sensor's x axis [rad] (REP 103 sign: positive = left side up).
        pitch: rotation about the sensor's y axis [rad]; positive = nose down.
    """

    height: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0

    def __post_init__(self) -> None:
        for name in ("height", "roll", "pitch"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"mounting {name} must be a finite number, got {getattr(self, name)!r}")
        if self.height < 0:
            raise ValueError(f"mounting height is metres above the ground (0 = the model's own height), "
                             f"got {self.height}")
        for name in ("roll", "pitch"):
            if abs(getattr(self, name)) >= math.pi / 2:
                raise ValueError(f"mounting {name} is in radians and must lie in (-pi/2, pi/2), "
                                 f"got {getattr(self, name)} (degrees given by mistake?)")

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) float64 ``R = Rx(roll) @ Ry(pitch)``: cloud-frame directions into the ground-aligned frame."""
        cr, sr, cp, sp = math.cos(self.roll), math.sin(self.roll), math.cos(self.pitch), math.sin(self.pitch)
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
        ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
        return rx @ ry

    def is_identity(self, model_height: float) -> bool:
        """True when the cloud is already in the model's frame (level, at the model's height)."""
        return self.roll == 0.0 and self.pitch == 0.0 and self.height in (0.0, model_height)

    def to_model(self, model_height: float) -> tuple[np.ndarray, np.ndarray]:
        """``(R, t)``, float64 (3, 3) and (3,): ``p_model = R @ p + t`` for a model trained ``model_height``
        metres above the ground."""
        dz = 0.0 if self.height == 0.0 else self.height - model_height
        return self.rotation, np.array([0.0, 0.0, dz])

    @classmethod
    def from_up(cls, up: np.ndarray, height: float) -> Mounting:
        """The mounting whose ground normal, seen in the cloud's frame, is ``up`` (3,), any length,
        pointing away from the ground; ``height`` [m] above that ground.

        ``R^T e_z = (-sin(pitch) cos(roll), sin(roll), cos(pitch) cos(roll))`` gives roll and pitch.
        """
        n = np.asarray(up, dtype=np.float64)
        n = n / np.linalg.norm(n)
        return cls(float(height), float(math.atan2(n[1], math.hypot(n[0], n[2]))),
                   float(math.atan2(-n[0], n[2])))

    @classmethod
    def from_transform(cls, rotation: np.ndarray, translation: np.ndarray) -> Mounting:
        """The mounting implied by the cloud-frame -> ground-frame transform ``p_g = rotation @ p + translation``
        of a frame whose ``z = 0`` is the ground (e.g. ``base_footprint``); its yaw and x/y offset are
        ignored (the model stays sensor-centred)."""
        rot = np.asarray(rotation, dtype=np.float64)
        height = float(np.asarray(translation, dtype=np.float64)[2])
        if height <= 0:
            raise ValueError(f"the sensor origin is {height:.3f} m above that frame's z = 0: a ground frame "
                             "must have the sensor above it")
        return cls.from_up(rot[2], height)


def points_to_model(points: np.ndarray | torch.Tensor, mounting: Mounting, model_height: float
                    ) -> np.ndarray | torch.Tensor:
    """Points moved from the cloud's frame into the model's frame.

    Args:
        points: (N, C) with x, y, z in columns 0..2 [m], cloud frame; numpy or torch (any device).
        mounting: the sensor's :class:`Mounting`.
        model_height: the model's training sensor height [m].
    Returns:
        A new array of the same type/device/dtype; columns 3.. are copied unchanged.
    """
    rot, t = mounting.to_model(model_height)
    if isinstance(points, torch.Tensor):
        out = points.clone()
        r = torch.as_tensor(rot, dtype=points.dtype, device=points.device)
        out[:, :3] = points[:, :3] @ r.T + torch.as_tensor(t, dtype=points.dtype, device=points.device)
        return out
    out = np.array(points, copy=True)
    out[:, :3] = points[:, :3] @ rot.T.astype(points.dtype) + t.astype(points.dtype)
    return out


def boxes_to_cloud(boxes: np.ndarray, mounting: Mounting, model_height: float,
                   velocities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxes (and velocities) found in the model's frame, moved back into the cloud's frame
    (:func:`transform_boxes` with the inverse of :func:`points_to_model`'s transform).

    Args:
        boxes: (K, 7) ``[x, y, z_center, length, width, height, yaw]`` in the model's frame (m, rad).
        mounting, model_height: as for :func:`points_to_model`.
        velocities: (K, 2) (vx, vy) [m/s] in the model's frame, or None.
    """
    rot, t = mounting.to_model(model_height)
    return transform_boxes(boxes, rot.T, -rot.T @ t, velocities)


def transform_boxes(boxes: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                    velocities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxes (and velocities) moved by the rigid transform ``p' = rotation @ p + translation``.

    Args:
        boxes: (K, 7) ``[x, y, z_center, length, width, height, yaw]`` (m, rad).
        rotation: (3, 3); translation: (3,) [m].
        velocities: (K, 2) (vx, vy) [m/s], or None.
    Returns:
        ``(boxes, velocities)`` in the target frame, same dtypes. The centre is moved exactly; a box stays
        upright about the target's z axis (the 7-value box cannot tilt), its yaw is the heading direction's
        projection onto the target's x-y plane, its size is unchanged. Velocities are rotated the same way
        (their z component dropped).
    """
    rot = np.asarray(rotation, dtype=np.float64)
    out = np.array(boxes, copy=True)
    vel = None if velocities is None else np.array(velocities, copy=True)
    if len(out) == 0:
        return out, vel
    out[:, :3] = boxes[:, :3].astype(np.float64) @ rot.T + np.asarray(translation, dtype=np.float64)
    yaw = boxes[:, 6].astype(np.float64)
    heading = np.stack([np.cos(yaw), np.sin(yaw), np.zeros(len(boxes))], axis=1) @ rot.T
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    if vel is not None:
        v3 = np.concatenate([vel.astype(np.float64), np.zeros((len(vel), 1))], axis=1) @ rot.T
        vel = v3[:, :2].astype(velocities.dtype)
    return out, vel


@dataclass(frozen=True)
class GroundEstimate:
    """A ground-plane fit and the mounting it implies.

    Attributes:
        mounting: height [m] of the sensor above the fitted plane, roll and pitch [rad].
        inlier_fraction: share of the ground candidates (lowest point per cell) within the inlier
            distance of the plane, in [0, 1]; flat open ground gives about 0.6-0.9.
        rms: root-mean-square distance to the plane of the points near it (within the inlier distance) [m].
        num_inliers: candidates that support the plane.
    """

    mounting: Mounting
    inlier_fraction: float
    rms: float
    num_inliers: int

    @property
    def quality(self) -> float:
        """One figure in [0, 1]: the inlier fraction, lowered when the inliers are spread (rms over 5 cm)."""
        return float(self.inlier_fraction * min(1.0, 0.05 / max(self.rms, 1e-6)))


def estimate_ground(points: np.ndarray, *, cell: float = 1.0, min_range: float = 2.5, max_range: float = 40.0,
                    inlier_distance: float = 0.08, max_tilt: float = math.radians(30.0), iterations: int = 200,
                    seed: int = 0) -> GroundEstimate | None:
    """Fit the ground plane of one cloud and return the sensor mounting it implies.

    Ground candidates are the lowest point of each ``cell`` x ``cell`` column (objects, walls and vegetation
    stand on the ground, so the lowest return of a column is mostly ground) between ``min_range`` and
    ``max_range`` metres of horizontal distance (close returns are often the robot itself). RANSAC over
    planes whose normal is within ``max_tilt`` of the sensor's z axis picks the plane with most candidates
    within ``inlier_distance``; a least-squares refit of all points near that plane gives the answer. Deterministic
    (``seed``).

    Args:
        points: (N, >=3) x, y, z in the cloud's frame [m].
    Returns:
        A :class:`GroundEstimate`, or None when fewer than 10 candidates exist or no plane below the sensor
        has any support.
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    r = np.hypot(xyz[:, 0], xyz[:, 1])
    xyz = xyz[(r >= min_range) & (r <= max_range)]
    if len(xyz) < 10:
        return None
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    key = (ij[:, 0] + (1 << 20)) * (1 << 21) + (ij[:, 1] + (1 << 20))
    order = np.lexsort((xyz[:, 2], key))  # by cell, lowest first within a cell
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    cand = xyz[order[first]]
    n = len(cand)
    if n < 10:
        return None
    rng = np.random.default_rng(seed)
    tri = cand[rng.integers(0, n, size=(iterations, 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-9
    normals = normals[ok] / norm[ok, None]
    normals *= np.where(normals[:, 2] < 0, -1.0, 1.0)[:, None]  # point up, away from the ground
    offsets = -np.einsum("ij,ij->i", normals, tri[ok, 0])  # plane n.p + d = 0; d = height for a plane below
    ok = (normals[:, 2] >= math.cos(max_tilt)) & (offsets > 0)
    if not ok.any():
        return None
    normals, offsets = normals[ok], offsets[ok]
    support = (np.abs(cand @ normals.T + offsets) <= inlier_distance).sum(axis=0)
    best = int(np.argmax(support))
    normal, offset = normals[best], offsets[best]
    # Least-squares refit on every point near the plane, not only the cell minima: the lowest point of a
    # cell sits below the mean ground by about 1.5 sigma of the range noise, the full set does not.
    for _ in range(2):  # twice: the refit plane can gain points
        near = xyz[np.abs(xyz @ normal + offset) <= inlier_distance]
        if len(near) < 3:
            return None
        centre = near.mean(axis=0)
        normal = np.linalg.svd(near - centre, full_matrices=False)[2][2]
        normal = normal if normal[2] > 0 else -normal
        offset = -float(normal @ centre)
    if offset <= 0:
        return None
    resid = cand @ normal + offset
    inliers = np.abs(resid) <= inlier_distance
    rms = float(np.sqrt(np.mean((near @ normal + offset) ** 2)))
    return GroundEstimate(Mounting.from_up(normal, offset), float(inliers.mean()), rms, int(inliers.sum()))


class AutoMounting:
    """Mounting estimated from the clouds themselves (``mounting.auto``): the first good ground fit is used at
    once, later ones move the estimate slowly (exponential smoothing), poor fits are ignored.

    Args:
        min_quality: fits with :attr:`GroundEstimate.quality` below this are not used.
        smoothing: weight of a new fit after the first one, in (0, 1].
        every: fit one cloud in ``every`` once the first good estimate exists (the fit costs a few ms).
    """

    def __init__(self, min_quality: float = 0.3, smoothing: float = 0.05, every: int = 10) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if every < 1:
            raise ValueError(f"every must be a positive number of clouds, got {every}")
        self.min_quality, self.smoothing, self.every = float(min_quality), float(smoothing), int(every)
        #: The mounting in force; None until the first good fit (the cloud is then used unchanged).
        self.current: Mounting | None = None
        #: The latest fit, used or not.
        self.last: GroundEstimate | None = None
        self.fits = 0
        self.rejected = 0
        self._seen = 0

    def update(self, points: np.ndarray) -> Mounting | None:
        """Feed one cloud ((N, >=3) x, y, z [m], cloud frame); returns the mounting in force afterwards."""
        self._seen += 1
        if self.current is not None and (self._seen - 1) % self.every:
            return self.current
        est = estimate_ground(points)
        self.last = est
        if est is None or est.quality < self.min_quality:
            self.rejected += 1
            return self.current
        self.fits += 1
        new = est.mounting
        if self.current is None:
            self.current = new
        else:
            a, old = self.smoothing, self.current
            self.current = Mounting(old.height + a * (new.height - old.height), old.roll + a * (new.roll - old.roll),
                                    old.pitch + a * (new.pitch - old.pitch))
        return self.current
