"""The one box-convention module: our LiDAR-frame boxes, KITTI camera-frame labels and det3d boxes.

**Our convention** (used by every other module): a box is ``[x, y, z_center, length, width, height, yaw]``
in the LiDAR frame (REP 103: x forward, y left, z up, metres). ``(x, y, z_center)`` is the geometric
centre of the box, ``length`` is measured along the heading, ``width`` across it, ``height`` along +z,
``yaw`` is in radians counter-clockwise from +x about +z, wrapped to ``[-pi, pi)`` by the functions here.

**KITTI labels** (``label_2/*.txt``): ``location`` is the *bottom* centre of the box in rectified camera
coordinates (x right, y down, z forward, metres), dimensions are ``h w l`` and ``rotation_y`` is the
rotation about the camera y axis (``rotation_y = 0``: the object faces camera +x). Conversion goes through
the calibration (``R0_rect @ Tr_velo_to_cam``): the centre is transformed as a point and the heading as a
direction, so calibrations with a non-standard axis permutation or small misalignments are handled. For the
standard KITTI calibration this reduces to ``yaw = -rotation_y - pi/2`` and ``z_center = z_bottom + h/2``.
The vertical of a KITTI box is the rectified camera's -y axis; a tilt between it and LiDAR +z (about
0.5 degrees in real KITTI calibrations) is ignored, as every KITTI tool does.

**det3d / nuScenes-style boxes** (CenterPoint, det3d): ``[x, y, z, w, l, h, (vx, vy,) r]`` in the same LiDAR
frame with ``length = box[4]``, ``width = box[3]`` and ``yaw = -r - pi/2``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "KittiCalib",
    "box_corners",
    "det3d_to_lidar",
    "kitti_to_lidar",
    "lidar_to_det3d",
    "lidar_to_kitti",
    "observation_angle",
    "points_in_boxes",
    "project_boxes_to_image",
    "wrap_angle",
]

TWO_PI = 2.0 * math.pi


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles (radians) to ``[-pi, pi)``; scalars stay scalars."""
    a = np.asarray(angle, dtype=np.float64)
    r = np.mod(a + math.pi, TWO_PI) - math.pi
    r = np.where(r >= math.pi, r - TWO_PI, r)  # (tiny negative) % 2pi may round up to exactly 2pi
    return float(r) if np.ndim(angle) == 0 else r


def _as_boxes(boxes: np.ndarray, ncols: int = 7) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] < ncols:
        raise ValueError(f"expected boxes of shape (K, >={ncols}), got {b.shape}")
    return b


# ---------------------------------------------------------------------------------------------------------
# Calibration


def _hom(m: np.ndarray) -> np.ndarray:
    """3x3 or 3x4 -> 4x4 homogeneous."""
    out = np.eye(4)
    out[: m.shape[0], : m.shape[1]] = m
    return out


@dataclass
class KittiCalib:
    """A KITTI ``calib/*.txt``: projection matrices ``P0..P3`` (3x4, rectified camera -> image pixels),
    ``R0_rect`` (3x3, camera -> rectified camera), ``Tr_velo_to_cam`` (3x4, LiDAR -> camera, metres) and
    ``Tr_imu_to_velo`` (3x4, IMU -> LiDAR)."""

    tr_velo_to_cam: np.ndarray
    r0_rect: np.ndarray = field(default_factory=lambda: np.eye(3))
    p: list[np.ndarray] = field(default_factory=lambda: [np.hstack([np.eye(3), np.zeros((3, 1))]) for _ in range(4)])
    tr_imu_to_velo: np.ndarray = field(default_factory=lambda: np.hstack([np.eye(3), np.zeros((3, 1))]))

    @property
    def p2(self) -> np.ndarray:
        """The left colour camera's projection matrix (the one KITTI labels' 2D boxes refer to)."""
        return self.p[2]

    @property
    def velo_to_rect(self) -> np.ndarray:
        """4x4 homogeneous transform LiDAR -> rectified camera (``R0_rect @ Tr_velo_to_cam``)."""
        return _hom(self.r0_rect) @ _hom(self.tr_velo_to_cam)

    @property
    def rect_to_velo(self) -> np.ndarray:
        """4x4 homogeneous transform rectified camera -> LiDAR."""
        return np.linalg.inv(self.velo_to_rect)

    @classmethod
    def from_text(cls, text: str) -> KittiCalib:
        values: dict[str, np.ndarray] = {}
        for line in text.splitlines():
            if ":" not in line:
                continue
            key, rest = line.split(":", 1)
            nums = rest.split()
            if nums:
                values[key.strip()] = np.array([float(v) for v in nums])
        if "Tr_velo_to_cam" not in values:  # raw-data style calib files spell it differently
            if "Tr_velo_cam" in values:
                values["Tr_velo_to_cam"] = values["Tr_velo_cam"]
            else:
                raise ValueError("calibration has no Tr_velo_to_cam")
        r0 = values.get("R0_rect", values.get("R_rect", np.eye(3).ravel())).reshape(3, 3)
        p = [values[f"P{i}"].reshape(3, 4) if f"P{i}" in values else np.hstack([np.eye(3), np.zeros((3, 1))])
             for i in range(4)]
        imu = values.get("Tr_imu_to_velo", values.get("Tr_imu_velo", np.hstack([np.eye(3), np.zeros((3, 1))])
                                                        .ravel())).reshape(3, 4)
        return cls(tr_velo_to_cam=values["Tr_velo_to_cam"].reshape(3, 4), r0_rect=r0, p=p, tr_imu_to_velo=imu)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> KittiCalib:
        return cls.from_text(Path(path).read_text())

    def to_text(self) -> str:
        """The calibration in KITTI's object-benchmark file format."""

        def fmt(m: np.ndarray) -> str:
            return " ".join(f"{v:.12e}" for v in np.asarray(m, dtype=np.float64).ravel())

        lines = [f"P{i}: {fmt(self.p[i])}" for i in range(4)]
        lines += [f"R0_rect: {fmt(self.r0_rect)}", f"Tr_velo_to_cam: {fmt(self.tr_velo_to_cam)}",
                  f"Tr_imu_to_velo: {fmt(self.tr_imu_to_velo)}"]
        return "\n".join(lines) + "\n\n"


# ---------------------------------------------------------------------------------------------------------
# KITTI labels <-> ours


def kitti_to_lidar(location: np.ndarray, dims_hwl: np.ndarray, rotation_y: np.ndarray, calib: KittiCalib
                   ) -> np.ndarray:
    """KITTI camera-frame boxes -> our LiDAR-frame boxes ``(K, 7)``.

    ``location``: ``(K, 3)`` bottom centres in rectified camera coordinates (metres); ``dims_hwl``:
    ``(K, 3)`` height, width, length (metres); ``rotation_y``: ``(K,)`` radians about camera y.
    """
    loc = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    dims = np.asarray(dims_hwl, dtype=np.float64).reshape(-1, 3)
    ry = np.asarray(rotation_y, dtype=np.float64).reshape(-1)
    h, w, length = dims[:, 0], dims[:, 1], dims[:, 2]
    centre_rect = loc.copy()
    centre_rect[:, 1] -= h / 2.0  # rectified camera y points down: the centre is h/2 above the bottom
    t = calib.rect_to_velo
    centre = centre_rect @ t[:3, :3].T + t[:3, 3]
    heading_rect = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], axis=1)
    heading = heading_rect @ t[:3, :3].T
    yaw = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    return np.stack([centre[:, 0], centre[:, 1], centre[:, 2], length, w, h, yaw], axis=1)


def lidar_to_kitti(boxes: np.ndarray, calib: KittiCalib) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our LiDAR-frame boxes ``(K, >=7)`` -> KITTI ``(location (K,3), dims_hwl (K,3), rotation_y (K,))``.

    The exact inverse of :func:`kitti_to_lidar` (to float rounding) whenever the calibration maps LiDAR +z
    onto rectified-camera -y; otherwise the heading is projected onto the camera's horizontal plane.
    ``rotation_y`` is wrapped to ``[-pi, pi)``.
    """
    b = _as_boxes(boxes)
    t = calib.velo_to_rect
    centre_rect = b[:, :3] @ t[:3, :3].T + t[:3, 3]
    loc = centre_rect.copy()
    loc[:, 1] += b[:, 5] / 2.0
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1)
    heading_rect = heading @ t[:3, :3].T
    ry = wrap_angle(np.arctan2(-heading_rect[:, 2], heading_rect[:, 0]))
    dims = np.stack([b[:, 5], b[:, 4], b[:, 3]], axis=1)
    return loc, dims, ry


def observation_angle(location: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """KITTI ``alpha`` (observation angle, ``[-pi, pi)``) from camera-frame locations and ``rotation_y``."""
    loc = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    return wrap_angle(np.asarray(rotation_y, dtype=np.float64) - np.arctan2(loc[:, 0], loc[:, 2]))


def project_boxes_to_image(boxes: np.ndarray, calib: KittiCalib, image_size: tuple[int, int] = (1242, 375),
                           min_depth: float = 0.1) -> np.ndarray:
    """2D image boxes ``(K, 4)`` ``[left, top, right, bottom]`` (pixels, camera 2) of LiDAR-frame boxes,
    clipped to ``image_size = (width, height)``. Boxes with a corner behind the camera (depth <
    ``min_depth``) or entirely outside the image get all zeros."""
    b = _as_boxes(boxes)
    out = np.zeros((len(b), 4))
    if not len(b):
        return out
    corners = box_corners(b).reshape(-1, 3)
    rect = corners @ calib.velo_to_rect[:3, :3].T + calib.velo_to_rect[:3, 3]
    uvw = np.hstack([rect, np.ones((len(rect), 1))]) @ calib.p2.T
    depth = rect[:, 2].reshape(-1, 8)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (uvw[:, 0] / uvw[:, 2]).reshape(-1, 8)
        v = (uvw[:, 1] / uvw[:, 2]).reshape(-1, 8)
    width, height = image_size
    ok = (depth >= min_depth).all(axis=1)
    box = np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1)
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, width - 1)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, height - 1)
    ok &= (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    out[ok] = box[ok]
    return out


# ---------------------------------------------------------------------------------------------------------
# det3d <-> ours


def det3d_to_lidar(boxes: np.ndarray) -> np.ndarray:
    """det3d ``[x, y, z, w, l, h, r]`` ``(K, 7)`` or ``[x, y, z, w, l, h, vx, vy, r]`` ``(K, 9)`` -> ours
    ``(K, 7)`` or ``[x, y, z, l, w, h, yaw, vx, vy]`` ``(K, 9)`` (velocities in m/s, LiDAR frame)."""
    b = _as_boxes(boxes)
    if b.shape[1] not in (7, 9):
        raise ValueError(f"det3d boxes have 7 or 9 columns, got {b.shape[1]}")
    yaw = wrap_angle(-b[:, -1] - math.pi / 2.0)
    out = np.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 4], b[:, 3], b[:, 5], yaw], axis=1)
    if b.shape[1] == 9:
        out = np.hstack([out, b[:, 6:8]])
    return out


def lidar_to_det3d(boxes: np.ndarray, velocities: np.ndarray | None = None) -> np.ndarray:
    """Ours ``(K, 7)`` (or ``(K, 9)`` with ``vx, vy`` in columns 7, 8) -> det3d ``[x, y, z, w, l, h, r]`` or,
    when velocities are given or present, ``[x, y, z, w, l, h, vx, vy, r]``; ``r`` wrapped to ``[-pi, pi)``."""
    b = _as_boxes(boxes)
    if velocities is None and b.shape[1] >= 9:
        velocities = b[:, 7:9]
    r = wrap_angle(-b[:, 6] - math.pi / 2.0)
    cols = [b[:, 0], b[:, 1], b[:, 2], b[:, 4], b[:, 3], b[:, 5]]
    if velocities is not None:
        v = np.asarray(velocities, dtype=np.float64).reshape(-1, 2)
        cols += [v[:, 0], v[:, 1]]
    return np.stack([*cols, r], axis=1)


# ---------------------------------------------------------------------------------------------------------
# Geometry

# Corner order of box_corners, in the box's own frame (x along the heading, y to its left, z up): bottom
# face first (front-left, front-right, rear-right, rear-left), then the top face in the same order.
_CX = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64)
_CY = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64)
_CZ = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners ``(K, 8, 3)`` of our boxes, same frame and units as the boxes. Order: bottom face
    front-left, front-right, rear-right, rear-left, then the top face in the same order ("front" = +heading,
    "left" = +90 degrees from it)."""
    b = _as_boxes(boxes)
    lx = _CX[None] * b[:, 3:4] / 2.0
    ly = _CY[None] * b[:, 4:5] / 2.0
    lz = _CZ[None] * b[:, 5:6] / 2.0
    c, s = np.cos(b[:, 6:7]), np.sin(b[:, 6:7])
    x = b[:, 0:1] + c * lx - s * ly
    y = b[:, 1:2] + s * lx + c * ly
    z = b[:, 2:3] + lz
    return np.stack([x, y, z], axis=2)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0, chunk: int = 1 << 15
                    ) -> np.ndarray:
    """``(N, K)`` bool: point ``n`` lies inside (or on the surface of) box ``k`` enlarged by ``margin``
    metres on every side. ``points``: ``(N, >=3)`` x, y, z in the boxes' frame; ``boxes``: ours ``(K, >=7)``.
    Vectorised over points and boxes (in chunks of ``chunk`` points to bound memory)."""
    pts = np.asarray(points)
    b = _as_boxes(boxes)
    n, k = len(pts), len(b)
    out = np.zeros((n, k), dtype=bool)
    if n == 0 or k == 0:
        return out
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    hl, hw, hh = b[:, 3] / 2 + margin, b[:, 4] / 2 + margin, b[:, 5] / 2 + margin
    for start in range(0, n, chunk):
        p = pts[start:start + chunk, :3].astype(np.float64)
        dx = p[:, 0:1] - b[None, :, 0]
        dy = p[:, 1:2] - b[None, :, 1]
        dz = np.abs(p[:, 2:3] - b[None, :, 2])
        inside = dz <= hh
        u = np.abs(dx * c + dy * s)
        inside &= u <= hl
        v = np.abs(-dx * s + dy * c)
        inside &= v <= hw
        out[start:start + chunk] = inside
    return out
