"""Procedural object shapes, each a :class:`~fastpillars_ros.sim.scene.Shape` of several primitives in the
object's own frame (origin at the bottom centre, +x = heading, +y = left, z up, metres).

Sizes (tight boxes, metres; label boxes add ``LABEL_MARGIN`` on the sides and top) follow KITTI's class
statistics: car l 3.4-4.9 (skewed to compact cars), w 1.5-1.9, h 1.33-1.62; pedestrian l 0.15-0.95 (stride
and arm swing), w 0.45-0.65, h 1.5-1.9; cyclist l 1.5-1.85, w 0.55-0.8, h 1.5-1.9. Vans and trucks are
larger distractors.
"""

from __future__ import annotations

import numpy as np

from fastpillars_ros.sim.scene import BOX, ELLIPSOID, Shape

__all__ = ["bush", "car", "clutter", "cyclist", "pedestrian", "pole", "tree", "truck", "van"]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * rng.random())


def _wheels(s: Shape, length: float, width: float, radius: float, inset: float, wheelbase_frac: float) -> None:
    x = length / 2 * wheelbase_frac
    for sx in (1, -1):
        for sy in (1, -1):
            s.add(BOX, (sx * x, sy * (width / 2 - 0.11), radius), (radius, 0.11 - inset, radius), "tyre")


def car(rng: np.random.Generator) -> Shape:
    """Sedan / hatchback / SUV: wheels, lower body box, flat-roofed cabin with slanted (ellipsoid) glass."""
    # Latent size class: correlated length and width, skewed towards compact cars like KITTI's (label box
    # means about l 3.95, w 1.7, h 1.52 after the label margin), no pile-up at the limits.
    size = rng.beta(2.0, 4.0)
    length = 3.4 + 1.5 * float(0.75 * size + 0.25 * rng.beta(2.0, 4.0))
    width = 1.5 + 0.4 * float(0.6 * size + 0.4 * rng.beta(1.5, 4.0))
    height = _u(rng, 1.33, 1.62)
    clearance = _u(rng, 0.22, 0.32)
    belt = height * _u(rng, 0.56, 0.64)
    s = Shape()
    r = _u(rng, 0.3, 0.34)
    _wheels(s, length, width, r, 0.0, _u(rng, 0.62, 0.72))
    # Lower body, with a slightly lower and shorter nose and tail.
    s.add(BOX, (0, 0, (belt + clearance) / 2), (length / 2 - 0.12, width / 2, (belt - clearance) / 2), "paint")
    s.add(BOX, (0, 0, (belt - 0.08 + clearance) / 2), (length / 2, width / 2 - 0.05, (belt - 0.08 - clearance) / 2),
          "paint")
    cab_len = length * _u(rng, 0.38, 0.5)
    cab_x = -length * _u(rng, 0.0, 0.1)
    cab_h = height - belt
    # Slanted windscreen and rear window: an ellipsoid whose upper half forms the greenhouse ...
    s.add(ELLIPSOID, (cab_x, 0, belt), (cab_len * 0.75, width * 0.44, cab_h * 0.97), "glass")
    # ... and a flat roof panel on top.
    s.add(BOX, (cab_x, 0, belt + cab_h * 0.7), (cab_len * 0.42, width * 0.42, cab_h * 0.3), "paint")
    return s


def van(rng: np.random.Generator) -> Shape:
    length, width, height = _u(rng, 4.4, 5.6), _u(rng, 1.85, 2.1), _u(rng, 1.9, 2.5)
    s = Shape()
    _wheels(s, length, width, _u(rng, 0.33, 0.38), 0.0, 0.66)
    hood = _u(rng, 0.6, 1.0)
    s.add(BOX, (-hood / 2, 0, (height + 0.3) / 2), ((length - hood) / 2, width / 2, (height - 0.3) / 2), "paint")
    s.add(BOX, (length / 2 - hood / 2, 0, 0.3 + height * 0.25), (hood / 2, width / 2 - 0.03, height * 0.25), "paint")
    s.add(ELLIPSOID, (length / 2 - hood, 0, height * 0.5), (hood * 0.9, width * 0.46, height * 0.42), "glass")
    return s


def truck(rng: np.random.Generator) -> Shape:
    cargo_len, width = _u(rng, 5.0, 9.5), _u(rng, 2.3, 2.55)
    cab_len, cab_h, cargo_h = _u(rng, 1.8, 2.4), _u(rng, 2.6, 3.2), _u(rng, 2.8, 3.8)
    length = cargo_len + cab_len + 0.3
    s = Shape()
    for x in (length / 2 - cab_len / 2, -length / 2 + 1.2, -length / 2 + 2.4):
        for sy in (1, -1):
            s.add(BOX, (x, sy * (width / 2 - 0.15), 0.5), (0.5, 0.15, 0.5), "tyre")
    s.add(BOX, (length / 2 - cab_len / 2, 0, (cab_h + 0.5) / 2), (cab_len / 2, width / 2 - 0.05, (cab_h - 0.5) / 2),
          "paint")
    s.add(BOX, (-length / 2 + cargo_len / 2, 0, (cargo_h + 0.9) / 2), (cargo_len / 2, width / 2, (cargo_h - 0.9) / 2),
          "metal")
    s.add(BOX, (0, 0, 0.8), (length / 2 - 0.3, 0.5, 0.15), "metal")  # chassis
    return s


def pedestrian(rng: np.random.Generator) -> Shape:
    """Legs (in stride), torso, head and swinging arms; sometimes a backpack."""
    height = _u(rng, 1.5, 1.9)
    shoulder = 0.19 * _u(rng, 0.8, 1.1)
    stride = _u(rng, 0.05, 0.4) if rng.random() < 0.85 else 0.0
    leg = 0.47 * height
    hip = leg
    top = height - 0.22
    s = Shape()
    for sx, sy in ((1, 1), (-1, -1)):
        s.add(BOX, (sx * stride, sy * 0.09, leg / 2), (0.075, 0.07, leg / 2), "cloth")
    s.add(BOX, (0, 0, (hip + top) / 2), (0.12 * _u(rng, 0.9, 1.3), shoulder, (top - hip) / 2), "cloth")
    s.add(ELLIPSOID, (0.01, 0, height - 0.115), (0.1, 0.085, 0.115), "skin")
    arm = 0.36 * height
    swing = 0.6 * stride
    for sx, sy in ((-1, 1), (1, -1)):
        s.add(BOX, (sx * swing, sy * (shoulder + 0.055), top - 0.03 - arm / 2), (0.05, 0.05, arm / 2), "cloth")
    if rng.random() < 0.25:
        s.add(BOX, (-0.2, 0, top - 0.25), (0.09, shoulder * 0.8, 0.2), "cloth")
    return s


def cyclist(rng: np.random.Generator) -> Shape:
    """Bicycle (two wheels, frame, handlebar) plus a leaning rider (torso, head, legs, arms)."""
    length = _u(rng, 1.5, 1.85)
    height = _u(rng, 1.5, 1.9)
    r = _u(rng, 0.31, 0.35)
    bar = _u(rng, 0.27, 0.38)
    s = Shape()
    for sx in (1, -1):
        s.add(ELLIPSOID, (sx * (length / 2 - r), 0, r), (r, 0.025, r), "tyre")
    s.add(BOX, (0, 0, r + 0.22), (length / 2 - r, 0.03, 0.12), "metal")
    hx = length / 2 - r - 0.12
    seat = 0.5 * height
    s.add(BOX, (hx, 0, (r + seat + 0.1) / 2 + 0.05), (0.03, 0.03, (seat + 0.1 - r) / 2), "metal")
    s.add(BOX, (hx, 0, seat + 0.12), (0.035, bar, 0.025), "metal")
    sx_seat = -0.25
    phase = _u(rng, -1, 1)
    for sy in (1, -1):
        s.add(BOX, (sx_seat + 0.12 + sy * 0.1 * phase, sy * 0.12, (seat + 0.05) / 2 + 0.05),
              (0.07, 0.065, (seat - 0.05) / 2), "cloth")
    torso_top = height - 0.2
    torso_half = (torso_top - seat) / 2 + 0.02
    s.add(ELLIPSOID, (sx_seat + 0.15, 0, (seat + torso_top) / 2), (0.24, 0.19, torso_half), "cloth")
    s.add(ELLIPSOID, (sx_seat + 0.35, 0, height - 0.11), (0.11, 0.09, 0.11), "skin")
    arm_z = seat + 0.7 * (torso_top - seat)
    for sy in (1, -1):
        s.add(BOX, ((sx_seat + 0.3 + hx) / 2, sy * min(bar - 0.04, 0.22), arm_z),
                   ((hx - sx_seat - 0.3) / 2 + 0.03, 0.04, 0.05), "cloth")
    return s


def tree(rng: np.random.Generator) -> Shape:
    trunk_h = _u(rng, 1.8, 3.5)
    s = Shape()
    s.add(BOX, (0, 0, trunk_h / 2), (_u(rng, 0.1, 0.22),) * 2 + (trunk_h / 2,), "bark", yaw=_u(rng, 0, 1.5))
    radius = _u(rng, 1.2, 3.0)
    for _ in range(int(rng.integers(2, 5))):
        rr = radius * _u(rng, 0.6, 1.0)
        s.add(ELLIPSOID, (rng.normal(0, radius * 0.3), rng.normal(0, radius * 0.3), trunk_h + rr * _u(rng, 0.6, 1.2)),
              (rr, rr * _u(rng, 0.8, 1.2), rr * _u(rng, 0.7, 1.1)), "vegetation", yaw=_u(rng, 0, 3))
    return s


def bush(rng: np.random.Generator) -> Shape:
    s = Shape()
    size = _u(rng, 0.4, 1.3)
    for _ in range(int(rng.integers(2, 6))):
        r = size * _u(rng, 0.5, 1.0)
        s.add(ELLIPSOID, (rng.normal(0, size), rng.normal(0, size * 0.6), r * _u(rng, 0.5, 0.9)),
              (r, r * _u(rng, 0.7, 1.2), r * _u(rng, 0.6, 1.0)), "vegetation", yaw=_u(rng, 0, 3))
    return s


def pole(rng: np.random.Generator) -> Shape:
    s = Shape()
    if rng.random() < 0.5:  # street lamp with an arm over the road (+x)
        h = _u(rng, 5.0, 9.0)
        w = _u(rng, 0.08, 0.13)
        s.add(BOX, (0, 0, h / 2), (w, w, h / 2), "metal")
        arm = _u(rng, 0.8, 2.5)
        s.add(BOX, (arm / 2, 0, h - 0.1), (arm / 2, 0.06, 0.06), "metal")
    else:  # traffic sign
        h = _u(rng, 2.0, 3.0)
        s.add(BOX, (0, 0, h / 2), (0.035, 0.035, h / 2), "metal")
        s.add(BOX, (0, 0, h + 0.3), (0.02, 0.32, 0.32), "sign")
    return s


def clutter(rng: np.random.Generator) -> Shape:
    """Unlabelled street furniture: bins, bollards, benches, boxes, road barriers."""
    s = Shape()
    k = int(rng.integers(0, 5))
    if k == 0:
        s.add(BOX, (0, 0, 0.5), (0.3, 0.3, 0.5), "paint")
    elif k == 1:
        s.add(BOX, (0, 0, 0.45), (0.08, 0.08, 0.45), "metal")
    elif k == 2:
        s.add(BOX, (0, 0, 0.45), (0.9, 0.3, 0.05), "wall")
        for sx in (1, -1):
            s.add(BOX, (sx * 0.8, 0, 0.2), (0.05, 0.25, 0.2), "metal")
    elif k == 3:
        h = _u(rng, 0.4, 1.4)
        s.add(BOX, (0, 0, h / 2), (_u(rng, 0.3, 1.0), _u(rng, 0.3, 1.0), h / 2), "wall")
    else:
        s.add(BOX, (0, 0, 0.5), (_u(rng, 1.0, 2.0), 0.2, 0.5), "sign")
    return s
