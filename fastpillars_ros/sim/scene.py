"""Scene description for the LiDAR simulator: ground with a road and kerbs, and solid primitives.

Everything is in the LiDAR frame (REP 103: x forward, y left, z up, metres; yaw radians CCW about +z) with
the sensor at the origin. Solids are *primitives*: oriented boxes and ellipsoids, each given by its centre,
half sizes along its own axes and a yaw. An object (a car, a pedestrian, a tree, ...) is a group of primitives
with an ``owner`` id; labelled objects also carry the tight box around all their primitives.

The ground is piecewise planar across the road: a gently sloped road plane ``z = z0 + ax + by`` for
``|s| < road_half_width`` (``s`` the signed lateral distance from the road's centre line); beyond the kerbs
the sidewalk at ``kerb_height`` above it; beyond the sidewalk, on each side, terrain starting
``terrain_offset`` above the sidewalk and rising (or falling) by ``terrain_slope`` per metre away from the
road (embankments, ditches). The kerb faces, and the step up to raised terrain, are vertical.

Along the road the ground may change grade (a ramp, a hill's foot or crest): ``grades`` holds, ahead of the
sensor (+u) and behind it (-u), the distance ``U`` (m) at which the grade changes and the change (m per m);
beyond ``|u| = U`` the whole cross-section (road, sidewalks, terrain) rises by ``grade * (|u| - U)``. The
sensor's own stretch keeps its plane, so a mounting fitted to the near ground stays right while objects far
away stand higher or lower than that plane says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from fastpillars_ros.boxes import wrap_angle

__all__ = ["BOX", "ELLIPSOID", "LABEL_MARGIN", "MATERIALS", "Ground", "Scene", "SceneObject", "Shape"]

BOX, ELLIPSOID = 0, 1
# Label boxes are the tight boxes around an object's primitives grown by this much (metres) on the four
# sides and the top, so that returns displaced outwards by the range noise (2-3 cm rms) stay inside.
LABEL_MARGIN = 0.05

# name -> (mean reflectivity 0..1, spread, extra range noise m, pass-through probability)
MATERIALS: dict[str, tuple[float, float, float, float]] = {
    "paint": (0.3, 0.25, 0.0, 0.0),
    "glass": (0.07, 0.04, 0.01, 0.25),
    "tyre": (0.05, 0.02, 0.0, 0.0),
    "metal": (0.35, 0.15, 0.0, 0.0),
    "cloth": (0.25, 0.15, 0.005, 0.0),
    "skin": (0.3, 0.05, 0.0, 0.0),
    "building": (0.3, 0.15, 0.005, 0.0),
    "wall": (0.25, 0.1, 0.005, 0.0),
    "vegetation": (0.45, 0.1, 0.06, 0.35),
    "bark": (0.3, 0.05, 0.01, 0.0),
    "sign": (0.8, 0.1, 0.0, 0.0),
}


@dataclass
class Shape:
    """Primitives of one object in its own frame (origin at the bottom centre, +x = heading, z up)."""

    kind: list[int] = field(default_factory=list)
    centre: list[tuple[float, float, float]] = field(default_factory=list)
    half: list[tuple[float, float, float]] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)
    material: list[str] = field(default_factory=list)

    def add(self, kind: int, centre: tuple[float, float, float], half: tuple[float, float, float],
            material: str, yaw: float = 0.0) -> Shape:
        self.kind.append(kind)
        self.centre.append(tuple(float(v) for v in centre))
        self.half.append(tuple(max(float(v), 1e-3) for v in half))
        self.yaw.append(float(yaw))
        self.material.append(material)
        return self

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds ``(lo (3,), hi (3,))`` of all primitives in the object's frame."""
        c = np.asarray(self.centre, dtype=np.float64)
        h = np.asarray(self.half, dtype=np.float64)
        y = np.asarray(self.yaw, dtype=np.float64)
        co, si = np.abs(np.cos(y)), np.abs(np.sin(y))
        kind = np.asarray(self.kind)
        # A yawed box's xy extent comes from its corners; a yawed ellipse's from its support function.
        ex_box = co * h[:, 0] + si * h[:, 1]
        ey_box = si * h[:, 0] + co * h[:, 1]
        ex_ell = np.sqrt((co * h[:, 0]) ** 2 + (si * h[:, 1]) ** 2)
        ey_ell = np.sqrt((si * h[:, 0]) ** 2 + (co * h[:, 1]) ** 2)
        ex = np.where(kind == BOX, ex_box, ex_ell)
        ey = np.where(kind == BOX, ey_box, ey_ell)
        e = np.stack([ex, ey, h[:, 2]], axis=1)
        return (c - e).min(axis=0), (c + e).max(axis=0)


@dataclass
class SceneObject:
    """A placed object. ``kitti_type`` is the label class (``None``: scenery, never labelled); ``box`` is the
    tight box (ours, LiDAR frame) around all its primitives."""

    kitti_type: str | None
    category: str
    box: np.ndarray


@dataclass
class Ground:
    """Piecewise-planar ground: a road strip and raised sidewalk/terrain (see the module docstring).

    ``road_dir``: the road's heading (radians); ``road_offset``: the lateral coordinate ``n . (x, y)`` of its
    centre line, ``n = (-sin road_dir, cos road_dir)``; the sensor sits at ``s = -road_offset``.
    """

    z0: float = -1.73
    slope: tuple[float, float] = (0.0, 0.0)
    road_dir: float = 0.0
    road_offset: float = 0.0
    road_half_width: float = 1e6  # 1e6: the road covers everything (flat ground, no kerbs)
    kerb_height: float = 0.0
    sidewalk_width: float = 3.0
    road_reflectivity: float = 0.2
    sidewalk_reflectivity: float = 0.28
    terrain_reflectivity: float = 0.4
    markings: bool = True
    terrain_offset: tuple[float, float] = (0.0, 0.0)  # right (s < 0), left (s > 0) side
    terrain_slope: tuple[float, float] = (0.0, 0.0)
    grades: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (0.0, 0.0))  # ahead, behind: (U, grade)

    @property
    def normal_dir(self) -> np.ndarray:
        return np.array([-math.sin(self.road_dir), math.cos(self.road_dir)])

    @property
    def axis_dir(self) -> np.ndarray:
        return np.array([math.cos(self.road_dir), math.sin(self.road_dir)])

    def lateral(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance (m) from the road's centre line, positive to the road's left."""
        n = self.normal_dir
        return n[0] * np.asarray(x) + n[1] * np.asarray(y) - self.road_offset

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground height z (m, LiDAR frame) at x, y."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        base = self.z0 + self.slope[0] * x + self.slope[1] * y
        s = self.lateral(x, y)
        a = np.abs(s)
        edge = self.road_half_width + self.sidewalk_width
        left = s > 0
        off = np.where(left, self.terrain_offset[1], self.terrain_offset[0])
        slope = np.where(left, self.terrain_slope[1], self.terrain_slope[0])
        terrain = self.kerb_height + off + slope * (a - edge)
        cross = np.where(a < self.road_half_width, 0.0, np.where(a < edge, self.kerb_height, terrain))
        u = self.axis_dir[0] * x + self.axis_dir[1] * y
        for sign, (start, grade) in zip((1.0, -1.0), self.grades, strict=True):
            if grade != 0.0:
                base = base + grade * np.maximum(sign * u - start, 0.0)
        return base + cross

    def piece(self, ahead: bool) -> Ground:
        """The ground beyond the grade change ahead (``ahead``) or behind the sensor, as one planar ground
        without grade changes: the same cross-section on the plane ``z0 - grade U + (slope + grade d) . (x, y)``,
        ``d`` the road's direction (towards that side)."""
        start, grade = self.grades[0 if ahead else 1]
        d = self.axis_dir * (grade if ahead else -grade)
        return replace(self, z0=self.z0 - grade * start, slope=(self.slope[0] + d[0], self.slope[1] + d[1]),
                       grades=((0.0, 0.0), (0.0, 0.0)))

    def to_world(self, u: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (u along the road from the sensor, s lateral) -> LiDAR x, y."""
        a, n = self.axis_dir, self.normal_dir
        u = np.asarray(u, dtype=np.float64)
        w = np.asarray(s, dtype=np.float64) + self.road_offset
        return a[0] * u + n[0] * w, a[1] * u + n[1] * w


class Scene:
    """Ground plus primitives (flat arrays, built with :meth:`add_shape`) and the objects that own them."""

    def __init__(self, ground: Ground | None = None) -> None:
        self.ground = ground or Ground()
        self.objects: list[SceneObject] = []
        self._kind: list[int] = []
        self._centre: list[np.ndarray] = []
        self._half: list[np.ndarray] = []
        self._yaw: list[float] = []
        self._refl: list[float] = []
        self._noise: list[float] = []
        self._pass: list[float] = []
        self._owner: list[int] = []

    def add_shape(self, shape: Shape, x: float, y: float, yaw: float, kitti_type: str | None, category: str,
                  rng: np.random.Generator, z: float | None = None, colour: float | None = None,
                  margin: float = LABEL_MARGIN) -> int:
        """Place ``shape`` with its bottom centre at ``(x, y, z)`` (``z`` default: the ground height there)
        heading ``yaw``; returns the new object's id. ``colour``: reflectivity of its ``paint`` parts.
        The object's box is the tight box around its primitives grown by ``margin`` metres on the four
        sides and the top (the bottom stays where the shape touches the ground)."""
        if z is None:
            z = float(self.ground.height(x, y))
        owner = len(self.objects)
        c, s = math.cos(yaw), math.sin(yaw)
        for kind, ctr, half, pyaw, mat in zip(shape.kind, shape.centre, shape.half, shape.yaw, shape.material,
                                              strict=True):
            mean, spread, noise, passthrough = MATERIALS[mat]
            refl = colour if (mat == "paint" and colour is not None) else mean + spread * (rng.random() - 0.5) * 2
            self._kind.append(kind)
            self._centre.append(np.array([x + c * ctr[0] - s * ctr[1], y + s * ctr[0] + c * ctr[1], z + ctr[2]]))
            self._half.append(np.array(half))
            self._yaw.append(yaw + pyaw)
            self._refl.append(float(np.clip(refl, 0.01, 1.0)))
            self._noise.append(noise)
            self._pass.append(passthrough)
            self._owner.append(owner)
        lo, hi = shape.extent()
        lo = lo - np.array([margin, margin, 0.0])
        hi = hi + margin
        mid = (lo + hi) / 2.0
        box = np.array([x + c * mid[0] - s * mid[1], y + s * mid[0] + c * mid[1], z + mid[2],
                        hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2], wrap_angle(yaw)])
        self.objects.append(SceneObject(kitti_type, category, box))
        return owner

    def primitives(self) -> dict[str, np.ndarray]:
        """Flat arrays: ``kind (P,)``, ``centre (P,3)``, ``half (P,3)``, ``yaw``, ``refl``, ``noise``,
        ``passthrough`` and ``owner (P,)`` (object id)."""
        n = len(self._kind)
        return {
            "kind": np.asarray(self._kind, dtype=np.int8).reshape(n),
            "centre": np.asarray(self._centre, dtype=np.float64).reshape(n, 3),
            "half": np.asarray(self._half, dtype=np.float64).reshape(n, 3),
            "yaw": np.asarray(self._yaw, dtype=np.float64).reshape(n),
            "refl": np.asarray(self._refl, dtype=np.float64).reshape(n),
            "noise": np.asarray(self._noise, dtype=np.float64).reshape(n),
            "passthrough": np.asarray(self._pass, dtype=np.float64).reshape(n),
            "owner": np.asarray(self._owner, dtype=np.int32).reshape(n),
        }

    def footprint_free(self, x: float, y: float, radius: float) -> bool:
        """True when a disc of ``radius`` at ``x, y`` stays clear of every object's box footprint."""
        if not self.objects:
            return True
        b = np.array([o.box for o in self.objects])
        dx, dy = x - b[:, 0], y - b[:, 1]
        c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
        u = np.maximum(np.abs(dx * c + dy * s) - b[:, 3] / 2.0, 0.0)
        v = np.maximum(np.abs(-dx * s + dy * c) - b[:, 4] / 2.0, 0.0)
        return bool(np.all(np.hypot(u, v) > radius))
