"""The pillar grid and the result type shared by every pillarization path (numpy/torch in ``pillarize.py``,
the CUDA kernels in ``pillarize_cuda.py``); its own module so that neither path imports the other's module
for them. The rules are in :mod:`fastpillars_ros.ops.pillarize`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["GridConstants", "Pillars", "grid_constants"]


class GridConstants(NamedTuple):
    """Scalars shared by every implementation (numpy, torch, CUDA kernels), float32 where the maths is."""

    x_min: np.float32
    y_min: np.float32
    z_min: np.float32
    px: np.float32
    py: np.float32
    z_centre: np.float32  # (z_max - z_min) * 0.5 in float32: z centre of a pillar relative to z_min
    nx: int
    ny: int


def grid_constants(pc_range: tuple[float, ...] | list[float], pillar_size: tuple[float, ...] | list[float]
                   ) -> GridConstants:
    """Grid size and float32 constants for ``pc_range`` (x_min, y_min, z_min, x_max, y_max, z_max) [m]
    and ``pillar_size`` (px, py) [m]. ``nx``/``ny`` are rounded in double precision."""
    if len(pc_range) != 6 or len(pillar_size) < 2:
        raise ValueError("pc_range must be (x_min, y_min, z_min, x_max, y_max, z_max), pillar_size (px, py)")
    x_min, y_min, z_min, x_max, y_max, z_max = (float(v) for v in pc_range)
    px, py = float(pillar_size[0]), float(pillar_size[1])
    if not (px > 0 and py > 0 and x_max > x_min and y_max > y_min):
        raise ValueError(f"empty grid: pc_range={tuple(pc_range)}, pillar_size={tuple(pillar_size)}")
    nx, ny = round((x_max - x_min) / px), round((y_max - y_min) / py)
    if nx < 1 or ny < 1 or nx * ny >= 2**31 or max(nx, ny) >= 2**23:
        raise ValueError(f"grid {ny}x{nx} is empty or too large for int32 cell ids")
    f32 = np.float32
    z_centre = f32(f32(f32(z_max) - f32(z_min)) * f32(0.5))
    return GridConstants(f32(x_min), f32(y_min), f32(z_min), f32(px), f32(py), z_centre, nx, ny)


@dataclass(frozen=True)
class Pillars:
    """Result of :func:`pillarize`. Arrays are numpy or torch (same type and device as the input points).

    Attributes:
        coords: (M, 2) int32 ``[row, col]`` = ``[y index, x index]`` of each non-empty pillar, row-major
            order; the pillar id is the row number in this array.
        point_pillar: (L,) int64 pillar id of each kept point.
        point_index: (L,) int64 index of each kept point in the input ``points`` (strictly ascending).
        grid_shape: (ny, nx) number of pillar rows and columns.

    On the numpy path ``coords`` and ``point_pillar`` are views of per-thread pooled buffers: a buffer is
    reused only after every array viewing it has been dropped, so holding the arrays (or views, or
    ``torch.from_numpy`` tensors of them) is always safe; code that keeps raw data pointers must keep
    the arrays too.
    """

    coords: Any
    point_pillar: Any
    point_index: Any
    grid_shape: tuple[int, int]

    @property
    def num_pillars(self) -> int:
        """M, the number of non-empty pillars."""
        return int(self.coords.shape[0])

    @property
    def num_points(self) -> int:
        """L, the number of kept points."""
        return int(self.point_index.shape[0])
