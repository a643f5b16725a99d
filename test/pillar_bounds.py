"""Points on, one float32 ulp inside and one ulp outside each bound of a pillar grid, with the cell each
must land in (``x_min <= x < x_max``, ``y_min <= y < y_max``). Shared by the CPU, torch, CUDA-on-CPU
harness and GPU pillarization tests so that every path is held to the same table.

The grid is 8 x 8 cells of 0.5 m over x in [0, 4), y in [-1, 3): here ``x - x_min`` and ``y - y_min`` are
exact in float32, so one ulp inside a bound is still inside after the float32 maths of the rule.
"""

from __future__ import annotations

import numpy as np

BOUNDS_RANGE = (0.0, -1.0, -3.0, 4.0, 3.0, 1.0)
BOUNDS_PILLAR = (0.5, 0.5)


def _just(value: float, direction: float) -> float:
    """The float32 neighbour of ``value`` towards ``direction``."""
    return float(np.nextafter(np.float32(value), np.float32(direction)))


# (x, y, expected (row, col) or None for dropped)
BOUND_CASES: list[tuple[float, float, tuple[int, int] | None]] = [
    (0.0, 0.0, (2, 0)), (_just(0.0, np.inf), 0.0, (2, 0)), (_just(0.0, -np.inf), 0.0, None),  # x_min
    (_just(4.0, -np.inf), 0.0, (2, 7)), (4.0, 0.0, None), (_just(4.0, np.inf), 0.0, None),  # x_max
    (1.0, -1.0, (0, 2)), (1.0, _just(-1.0, np.inf), (0, 2)), (1.0, _just(-1.0, -np.inf), None),  # y_min
    (1.0, _just(3.0, -np.inf), (7, 2)), (1.0, 3.0, None), (1.0, _just(3.0, np.inf), None),  # y_max
    (-0.25, 0.0, None), (1.0, -1.25, None),  # half a pillar outside the lower bounds
]


def bound_points() -> np.ndarray:
    """(len(BOUND_CASES), 4) float32 points of the table (z = 0, intensity = 0.5)."""
    return np.array([[x, y, 0.0, 0.5] for x, y, _ in BOUND_CASES], np.float32)


def expected_cells() -> dict[int, tuple[int, int]]:
    """Point index -> (row, col) for every point of the table that must be kept."""
    return {i: cell for i, (_, _, cell) in enumerate(BOUND_CASES) if cell is not None}


def cells_of(point_index: np.ndarray, point_pillar: np.ndarray, coords: np.ndarray) -> dict[int, tuple[int, int]]:
    """Point index -> (row, col) of a pillarization result (host numpy arrays)."""
    rows_cols = np.asarray(coords)[np.asarray(point_pillar)].tolist()
    return {int(i): tuple(c) for i, c in zip(np.asarray(point_index).tolist(), rows_cols, strict=True)}
