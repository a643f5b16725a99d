"""The one class colour table: RViz markers (``ros/messages.py``) and BEV pictures (``tools/viz.py``) use it, so a class
has the same colour in both, unknown classes included."""

from __future__ import annotations

__all__ = ["CLASS_COLORS", "class_color"]

#: RGB in [0, 1] for the classes users expect to tell apart; other classes get a stable colour from the name.
CLASS_COLORS: dict[str, tuple[float, float, float]] = {
    "car": (0.20, 0.60, 1.00),
    "truck": (0.10, 0.30, 0.90),
    "construction_vehicle": (0.60, 0.40, 0.10),
    "bus": (0.50, 0.20, 0.90),
    "trailer": (0.40, 0.40, 0.70),
    "barrier": (0.70, 0.70, 0.70),
    "motorcycle": (1.00, 0.80, 0.00),
    "bicycle": (0.10, 0.90, 0.30),
    "cyclist": (0.10, 0.90, 0.30),
    "pedestrian": (1.00, 0.30, 0.20),
    "traffic_cone": (1.00, 0.55, 0.00),
}


def class_color(name: str) -> tuple[float, float, float]:
    """RGB in [0, 1] for a class name: the table above, else a stable hash colour."""
    if name in CLASS_COLORS:
        return CLASS_COLORS[name]
    h = sum((i + 1) * ord(c) for i, c in enumerate(name)) % 360 / 360.0
    # HSV (h, 0.8, 1.0) -> RGB, so that unknown classes are still saturated and readable on dark backgrounds.
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = 0.2, 1.0 - 0.8 * f, 0.2 + 0.8 * f
    return [(1.0, t, p), (q, 1.0, p), (p, 1.0, t), (p, q, 1.0), (t, p, 1.0), (1.0, p, q)][i]
