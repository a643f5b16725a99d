"""Procedural street scenes: a sloped road with kerbs and sidewalks, buildings or open terrain with trees,
bushes, walls and parking lots, poles and street furniture, parked rows and moving vehicles, pedestrians
on the sidewalks and crossing, cyclists near the road edge, and (optionally) vehicles crossing the road.

Road coordinates: ``u`` along the road (from the sensor), ``s`` lateral (positive left). Traffic is
right-handed: lanes with ``s < 0`` drive towards +u. The sensor vehicle drives in one of the lanes.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from fastpillars_ros.sim import objects
from fastpillars_ros.sim.scene import BOX, Ground, Scene, Shape
from fastpillars_ros.sim.sensors import SensorModel

__all__ = ["street_scene"]

U_MAX = 80.0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * rng.random())


class _Placer:
    def __init__(self, scene: Scene, rng: np.random.Generator) -> None:
        self.scene = scene
        self.rng = rng
        self.g = scene.ground

    def place(self, shape: Shape, u: float, s: float, yaw_road: float, kitti_type: str | None, category: str,
              margin: float = 0.3, check: bool = True, colour: float | None = None, sink: float = 0.0) -> bool:
        """Place ``shape`` at road coordinates (u, s) with heading ``yaw_road`` relative to the road, unless it
        would overlap an object already placed (discs along its length, ``margin`` metres of clearance)."""
        x, y = self.g.to_world(u, s)
        x, y = float(x), float(y)
        yaw = self.g.road_dir + yaw_road
        if math.hypot(x, y) < 3.0 + margin:  # keep the sensor vehicle's own space free
            return False
        lo, hi = shape.extent()
        half_w = max(-lo[1], hi[1]) + margin
        if check:
            n = max(1, math.ceil((hi[0] - lo[0]) / max(2 * half_w, 0.2)))
            for t in np.linspace(lo[0] + half_w, hi[0] - half_w, n) if hi[0] - lo[0] > 2 * half_w else [0.0]:
                cx, cy = x + math.cos(yaw) * t, y + math.sin(yaw) * t
                if not self.scene.footprint_free(cx, cy, half_w):
                    return False
        z = float(self.g.height(x, y)) - sink
        self.scene.add_shape(shape, x, y, yaw, kitti_type, category, self.rng, z=z, colour=colour)
        return True


def _building(rng: np.random.Generator, length: float, depth: float, height: float) -> Shape:
    s = Shape()
    s.add(BOX, (0, 0, height / 2), (length / 2, depth / 2, height / 2), "building")
    if rng.random() < 0.4:  # a ground-floor awning or a balcony row on the street side (-y)
        z = _u(rng, 2.5, min(6.0, height - 0.5))
        s.add(BOX, (0, -depth / 2 - 0.4, z), (length / 2 * _u(rng, 0.3, 0.9), 0.4, 0.1), "wall")
    if rng.random() < 0.3 and height > 6:  # a set-back upper storey
        s.add(BOX, (0, 1.0, height + 1.5), (length / 2 * 0.8, depth / 2 - 1.0, 1.5), "building")
    return s


def _wall(rng: np.random.Generator, length: float) -> Shape:
    h = _u(rng, 0.8, 2.2)
    return Shape().add(BOX, (0, 0, h / 2), (length / 2, _u(rng, 0.08, 0.2), h / 2), "wall")


def _vehicle(rng: np.random.Generator, p_van: float = 0.1, p_truck: float = 0.04) -> tuple[Shape, str, str]:
    r = rng.random()
    if r < p_truck:
        return objects.truck(rng), "Truck", "truck"
    if r < p_truck + p_van:
        return objects.van(rng), "Van", "van"
    return objects.car(rng), "Car", "car"


# Grade changes (``ramps``): where along the road, and by how much the grade changes there (m per m).
RAMP_START = (4.0, 30.0)
RAMP_GRADE = 0.08
# Cross traffic (``crossings``): how far ahead of or behind the sensor vehicles cross the road (m), and how many.
CROSSING_AT = (8.0, 45.0)
CROSSING_VEHICLES = (1, 3)
#: Where pedestrians and cyclists stand along the road (``vru_ranges``): "uniform" out to 55 m (pedestrians) and
#: 60 m (cyclists) ahead and behind, or "kitti": nearer, as in KITTI's labels (MODEL_CARD step 5 item 28).
VRU_RANGES = ("uniform", "kitti")
#: "kitti": distance along the road as a lognormal (median m, sigma) per class, cut at the uniform range. In the
#: camera's view this gives pedestrians at 14 / 18 / 23 m and cyclists at 16 / 21 / 29 m (quartiles; KITTI's
#: labels: 10 / 15 / 23 m and 14 / 22 / 31 m, uniform: 21 / 30 / 40 m and 19 / 28 / 38 m).
KITTI_VRU_DISTANCE = {"pedestrian": (14.0, 0.55), "cyclist": (21.0, 0.5)}


_NORMAL = statistics.NormalDist()


def _along(rng: np.random.Generator, limit: float, lognormal: tuple[float, float] | None) -> float:
    """Position along the road (m), from one uniform draw in ``[-limit, limit]``: the draw itself, or its quantile
    mapped onto a ``(median, sigma)`` lognormal distance cut at ``limit`` (same side of the sensor).

    Either way an object takes exactly one draw for its place, so what is drawn before it does not change.
    """
    r = _u(rng, -limit, limit)
    if lognormal is None:
        return r
    median, sigma = lognormal
    top = _NORMAL.cdf((math.log(limit) - math.log(median)) / sigma)
    q = min(max(abs(r) / limit * top, 1e-9), 1.0 - 1e-9)
    return math.copysign(math.exp(math.log(median) + sigma * _NORMAL.inv_cdf(q)), r)


def street_scene(rng: np.random.Generator, sensor: SensorModel, ramps: float = 0.0,
                 crossings: float = 0.0, vru_ranges: str = "uniform") -> Scene:
    """A random street scene around a sensor mounted ``sensor.mount_height`` above the road.

    ``ramps``: the probability, ahead of and behind the sensor each, that the road changes grade (a ramp, the
    foot or crest of a hill) between ``RAMP_START`` metres away, by up to ``RAMP_GRADE`` either way. The grade
    changes are drawn from a stream of their own (``rng``'s bit generator jumped ahead), so a scene with
    ``ramps=0`` is the same scene as before they existed and ``ramps > 0`` changes only the ground beyond them.

    ``crossings``: the probability, ahead of and behind the sensor each, of vehicles crossing the road at right
    angles (:func:`_cross_traffic`): seen side on, as at a junction, where the street's own traffic is seen end on.
    They are drawn last and from a stream of their own, so ``crossings > 0`` only adds vehicles to the scene.

    ``vru_ranges``: how far along the road pedestrians and cyclists stand (:data:`VRU_RANGES`); "kitti" draws
    them nearer (:data:`KITTI_VRU_DISTANCE`) in the same street, among the same vehicles (drawn before them).
    """
    if not 0.0 <= ramps <= 1.0:
        raise ValueError(f"ramps must be a probability in [0, 1], got {ramps}")
    if not 0.0 <= crossings <= 1.0:
        raise ValueError(f"crossings must be a probability in [0, 1], got {crossings}")
    if vru_ranges not in VRU_RANGES:
        raise ValueError(f"vru_ranges must be one of {VRU_RANGES}, got {vru_ranges!r}")
    vru_distance = KITTI_VRU_DISTANCE if vru_ranges == "kitti" else {}
    grades = ((0.0, 0.0), (0.0, 0.0))
    if ramps > 0.0:
        side_rng = np.random.Generator(rng.bit_generator.jumped())
        grades = tuple((_u(side_rng, *RAMP_START), _u(side_rng, -RAMP_GRADE, RAMP_GRADE))
                       if side_rng.random() < ramps else (0.0, 0.0) for _ in range(2))
    lanes = int(rng.integers(1, 3))
    lane_w = _u(rng, 3.0, 3.7)
    parking = [rng.random() < 0.7, rng.random() < 0.6]  # right (s < 0), left (s > 0)
    park_w = 2.3
    half_w = lanes * lane_w + park_w * max(parking)  # symmetric road; an empty parking strip is just road
    ego_lane = int(rng.integers(0, lanes))
    ego_side = -1 if rng.random() < 0.75 else 1
    s_ego = ego_side * lane_w * (ego_lane + 0.5) + rng.normal(0, 0.3)
    road_dir = rng.normal(0, 0.05) if rng.random() < 0.8 else _u(rng, -0.8, 0.8)
    slope = tuple(float(np.clip(rng.normal(0, 0.005), -0.012, 0.012)) for _ in range(2))
    # Per side (right, left): built-up or open; open sides may hold a (level) parking lot.
    built = [rng.random() < 0.72 for _ in range(2)]
    lot = [not built[k] and rng.random() < 0.5 for k in range(2)]
    t_off = tuple(0.0 if lot[k] or rng.random() < 0.5 else _u(rng, -0.8, 0.4) for k in range(2))
    t_slope = tuple(0.0 if lot[k] or rng.random() < 0.5 else _u(rng, -0.03, 0.05) for k in range(2))
    ground = Ground(
        z0=-sensor.mount_height + rng.normal(0, 0.03), slope=slope, road_dir=road_dir, road_offset=-s_ego,
        road_half_width=half_w, kerb_height=_u(rng, 0.08, 0.16) if rng.random() < 0.85 else 0.0,
        sidewalk_width=_u(rng, 2.0, 5.0), road_reflectivity=_u(rng, 0.15, 0.35),
        sidewalk_reflectivity=_u(rng, 0.2, 0.4), terrain_reflectivity=_u(rng, 0.3, 0.5),
        markings=rng.random() < 0.8, terrain_offset=t_off, terrain_slope=t_slope, grades=grades)
    scene = Scene(ground)
    p = _Placer(scene, rng)
    walk_in, walk_out = half_w + 0.4, half_w + ground.sidewalk_width - 0.3
    facade = half_w + ground.sidewalk_width

    # --- roadside scenery: poles and trees on the sidewalk's edges -------------------------------------
    for side in (-1, 1):
        u = -U_MAX + _u(rng, 0, 20)
        while u < U_MAX:
            p.place(objects.pole(rng), u, side * (half_w + 0.35), -side * math.pi / 2, None, "pole", margin=0.1)
            u += _u(rng, 12, 35)
        if rng.random() < 0.55:
            u = -U_MAX + _u(rng, 0, 10)
            while u < U_MAX:
                p.place(objects.tree(rng), u, side * (facade - 0.8), 0.0, None, "tree", margin=0.1, check=False)
                u += _u(rng, 6, 16)

    # --- buildings / open terrain ------------------------------------------------------------------------
    for side in (-1, 1):
        k_side = 0 if side < 0 else 1
        if built[k_side]:
            u = -U_MAX - 20 + _u(rng, 0, 10)
            while u < U_MAX + 20:
                length = _u(rng, 8, 30)
                if rng.random() < 0.75:
                    depth, height = _u(rng, 8, 15), _u(rng, 3.5, 20)
                    setback = _u(rng, 0, 5) if rng.random() < 0.5 else 0.2
                    p.place(_building(rng, length, depth, height), u + length / 2,
                            side * (facade + setback + depth / 2), 0.0 if side > 0 else math.pi, None, "building",
                            check=False, sink=0.5)
                elif rng.random() < 0.6:
                    p.place(_wall(rng, length), u + length / 2, side * (facade + 0.3), 0.0, None, "wall",
                            check=False, margin=0.0)
                u += length + (_u(rng, 1, 10) if rng.random() < 0.5 else 0.0)
        else:
            if lot[k_side]:  # parking lot: rows of cars perpendicular to the road
                rows = int(rng.integers(1, 4))
                for r in range(rows):
                    s_row = facade + 4.0 + r * 11.0
                    u = _u(rng, -35, -15)
                    while u < _u(rng, 15, 40):
                        if rng.random() < 0.7:
                            shape, kt, cat = _vehicle(rng, 0.08, 0.0)
                            flip = math.pi if rng.random() < 0.5 else 0.0
                            p.place(shape, u, side * s_row, math.pi / 2 + flip + rng.normal(0, 0.05), kt, cat,
                                    colour=_u(rng, 0.05, 0.7))
                        u += _u(rng, 2.4, 3.0)
            elif rng.random() < 0.5:
                p.place(_wall(rng, 2 * U_MAX), 0.0, side * (facade + 0.3), 0.0, None, "wall", check=False)
            for _ in range(int(rng.integers(5, 25))):
                p.place(objects.tree(rng), _u(rng, -U_MAX, U_MAX), side * _u(rng, facade + 2, facade + 45), 0.0, None,
                        "tree", margin=0.5)
        for _ in range(int(rng.integers(2, 12))):
            p.place(objects.bush(rng), _u(rng, -U_MAX, U_MAX), side * _u(rng, facade + 0.5, facade + 12), 0.0, None,
                    "bush", margin=0.2)

    # --- vehicles -----------------------------------------------------------------------------------------
    for side, has_parking in zip((-1, 1), parking, strict=True):
        if not has_parking:
            continue
        occupancy = _u(rng, 0.3, 0.9)
        s_row = side * (half_w - park_w / 2 + rng.normal(0, 0.1))
        u = -U_MAX + _u(rng, 0, 5)
        heading = 0.0 if side < 0 else math.pi
        while u < U_MAX:
            shape, kt, cat = _vehicle(rng)
            lo, hi = shape.extent()
            length = hi[0] - lo[0]
            if rng.random() < occupancy:
                flip = math.pi if rng.random() < 0.1 else 0.0
                p.place(shape, u + length / 2, s_row + rng.normal(0, 0.1), heading + flip + rng.normal(0, 0.03), kt,
                        cat, margin=0.15, colour=_u(rng, 0.05, 0.7))
            u += length + _u(rng, 0.5, 3.0)
    for _ in range(int(rng.integers(2, 14))):
        side = -1 if rng.random() < 0.5 else 1
        lane = int(rng.integers(0, lanes))
        shape, kt, cat = _vehicle(rng, 0.1, 0.06)
        heading = (0.0 if side < 0 else math.pi) + rng.normal(0, 0.04)
        p.place(shape, _u(rng, -U_MAX, U_MAX), side * lane_w * (lane + 0.5) + rng.normal(0, 0.3), heading, kt, cat,
                margin=0.8, colour=_u(rng, 0.05, 0.7))

    # --- cyclists -----------------------------------------------------------------------------------------
    for _ in range(int(rng.integers(1, 8))):
        side = -1 if rng.random() < 0.5 else 1
        if rng.random() < 0.8:
            s = side * (lanes * lane_w - _u(rng, 0.6, 1.2))
            heading = (0.0 if side < 0 else math.pi) + rng.normal(0, 0.08)
        else:
            s = side * _u(rng, walk_in + 0.4, max(walk_out, walk_in + 0.5))
            heading = _u(rng, -math.pi, math.pi)
        p.place(objects.cyclist(rng), _along(rng, 60.0, vru_distance.get("cyclist")), s, heading,
                "Cyclist", "cyclist", margin=0.3)

    # --- pedestrians -----------------------------------------------------------------------------------------
    for _ in range(int(rng.integers(3, 18))):
        side = -1 if rng.random() < 0.5 else 1
        u0 = _along(rng, 55.0, vru_distance.get("pedestrian"))
        if rng.random() < 0.15:  # crossing the road
            s0 = _u(rng, -half_w + 0.5, half_w - 0.5)
            heading = (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.normal(0, 0.2)
        else:
            s0 = side * _u(rng, walk_in, max(walk_out, walk_in + 0.1))
            heading = (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0, 0.3)
            if rng.random() < 0.2:
                heading = _u(rng, -math.pi, math.pi)
        group = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
        for k in range(group):
            du, ds = (k * _u(rng, 0.6, 1.1), rng.normal(0, 0.3)) if k else (0.0, 0.0)
            p.place(objects.pedestrian(rng), u0 + du, s0 + ds, heading + rng.normal(0, 0.15), "Pedestrian",
                    "pedestrian", margin=0.1)

    # --- street furniture (unlabelled distractors) ------------------------------------------------------------
    for _ in range(int(rng.integers(2, 12))):
        side = -1 if rng.random() < 0.5 else 1
        p.place(objects.clutter(rng), _u(rng, -U_MAX, U_MAX), side * _u(rng, walk_in, max(walk_out, walk_in + 0.1)),
                _u(rng, -0.2, 0.2), None, "clutter", margin=0.2)
    if crossings > 0.0:
        _cross_traffic(_Placer(scene, np.random.Generator(rng.bit_generator.jumped(2))), crossings, half_w)
    return scene


def _cross_traffic(p: _Placer, probability: float, half_w: float) -> None:
    """Ahead of and behind the sensor, each with ``probability``: ``CROSSING_VEHICLES`` vehicles crossing the road
    (half width ``half_w``, m) at right angles about ``CROSSING_AT`` metres away, where they fit among what is there."""
    for sign in (1.0, -1.0):
        if p.rng.random() >= probability:
            continue
        u_cross = sign * _u(p.rng, *CROSSING_AT)
        for _ in range(int(p.rng.integers(CROSSING_VEHICLES[0], CROSSING_VEHICLES[1] + 1))):
            shape, kt, cat = _vehicle(p.rng)
            heading = (math.pi / 2 if p.rng.random() < 0.5 else -math.pi / 2) + p.rng.normal(0, 0.1)
            p.place(shape, u_cross + p.rng.normal(0, 3.0), _u(p.rng, -half_w + 1.0, half_w - 1.0), heading, kt, cat,
                    margin=0.5, colour=_u(p.rng, 0.05, 0.7))
