"""Pillarization and decoration as a small C kernel (``ops/pillarize_cpu.c``), the CPU fast path of
:func:`~fastpillars_ros.ops.pillarize.pillarize` and :func:`~fastpillars_ros.ops.pillarize.decorate` for numpy
input. Results equal the numpy reference bit for bit (test/test_ops_pillarize.py); about 1 ms against 2.8 ms for
pillarize and decorate of a 118k-point KITTI scan (BENCHMARKS.md, #17). Built and cached by ``ops/native.py``
(no compiler or ``FASTPILLARS_NATIVE=0``: :func:`kernel` returns None and the numpy reference runs).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from fastpillars_ros.ops import native
from fastpillars_ros.ops.grid import GridConstants

SOURCE = Path(__file__).with_name("pillarize_cpu.c")
# No -ffast-math and no FMA contraction: the float32 rules of ops/pillarize.py, one rounding per operation.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC")

_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (numpy fallback; the reason is logged once)."""
    return native.load(SOURCE, COMPILE_FLAGS, {
        "pillarize": (_I64, [_P, _I64, _I64, _F32, _F32, _F32, _F32, _I64, _I64, _P, _P, _P, _P, _P, _P]),
        "decorate": (ctypes.c_int, [_P, _I64, _I64, _P, _P, _I64, _P, _I64, _F32, _F32, _F32, _F32, _F32, _F32, _P]),
    })


def pillarize(lib: ctypes.CDLL, points: np.ndarray, g: GridConstants, occupied: np.ndarray, lut: np.ndarray,
              point_index: np.ndarray, point_pillar: np.ndarray, coords: np.ndarray) -> tuple[int, int]:
    """Fill the output buffers; returns (L kept points, M pillars).

    Args:
        points: ``(N, C>=3)`` float32 C-contiguous, metres, lidar frame.
        g: the grid.
        occupied: ``[ny * nx]`` bool, all False (left all False).
        lut: ``[ny * nx]`` int64 scratch.
        point_index, point_pillar: ``[>=N]`` int64 outputs (the first L are written).
        coords: ``[>=min(N, ny * nx), 2]`` int32 C-contiguous output (the first M rows are written).
    """
    num_pillars = ctypes.c_int64(0)
    kept = lib.pillarize(points.ctypes.data, points.shape[0], points.shape[1], g.x_min, g.y_min, g.px, g.py, g.nx,
                         g.ny, occupied.ctypes.data, lut.ctypes.data, point_index.ctypes.data,
                         point_pillar.ctypes.data, coords.ctypes.data, ctypes.byref(num_pillars))
    return int(kept), num_pillars.value


def decorate(lib: ctypes.CDLL, points: np.ndarray, point_index: np.ndarray, point_pillar: np.ndarray,
             coords: np.ndarray, g: GridConstants) -> np.ndarray:
    """``(L, C + 3)`` float32 decorated features of the kept points (``points`` ``(N, C)`` float32 C-contiguous;
    ``point_index``, ``point_pillar`` ``[L]`` int64 and ``coords`` ``[M, 2]`` int32, all C-contiguous).

    Raises:
        ValueError: a point index outside the points or a pillar id outside ``coords`` (Pillars not made by
            :func:`pillarize` for these points).
    """
    if point_pillar.shape != point_index.shape:
        raise ValueError(f"pillars.point_pillar has {point_pillar.shape[0]} entries, point_index "
                         f"{point_index.shape[0]}: give decorate the Pillars that pillarize made for these points")
    out = np.empty((point_index.shape[0], points.shape[1] + 3), np.float32)
    if lib.decorate(points.ctypes.data, points.shape[0], points.shape[1], point_index.ctypes.data,
                    point_pillar.ctypes.data, point_index.shape[0], coords.ctypes.data, coords.shape[0], g.x_min,
                    g.y_min, g.z_min, g.px, g.py, g.z_centre, out.ctypes.data) != 0:
        raise ValueError(f"pillars.point_index or point_pillar out of range for {points.shape[0]} points and "
                         f"{coords.shape[0]} pillars: give decorate the Pillars that pillarize made for these points")
    return out
