"""numpy -> ``sensor_msgs/PointCloud2``: build clouds in any driver's layout (tests, benchmarks, tools that
publish clouds). The ROS-facing half of :mod:`fastpillars_ros.pointcloud`, which reads clouds without ROS."""

from __future__ import annotations

import array
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The layout rules are pointcloud's (one definition): its private helpers are used on purpose.
from fastpillars_ros.pointcloud import _TYPECODES, _XYZ, DATATYPE_NAMES, FLOAT32, _point_dtype, field_layout

__all__ = ["PAD_BYTE", "array_to_cloud", "make_cloud"]



def _new_cloud(header: Any) -> Any:
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header

    msg = PointCloud2()
    msg.header = header if header is not None else Header()
    return msg


#: Byte written into padding (gaps between fields, row_step tails) by make_cloud: a non-zero value, so a
#: reader that wrongly reads padding produces visible garbage in tests instead of plausible zeros.
PAD_BYTE = 0xA5


def make_cloud(columns: Mapping[str, np.ndarray], layout: Sequence[tuple[str, int, int]], point_step: int,
               header: Any = None, height: int = 1, row_step: int | None = None, is_bigendian: bool = False
               ) -> Any:
    """Build a ``sensor_msgs/PointCloud2`` in an arbitrary layout (any driver's, see ``DRIVER_LAYOUTS``).

    ``columns`` maps field name -> values of shape ``(N,)`` (or ``(height, width)``), N = height * width,
    in row-major order; ``layout`` is a list of ``(name, byte offset, PointField datatype)``. Layout
    fields without a column are written as 0; a column not in the layout raises ``ValueError``. Values
    are converted to each field's datatype (integers must fit it). ``row_step`` defaults to
    ``width * point_step``; bytes beyond the fields (gaps, row padding) are filled with ``PAD_BYTE``.
    ``header`` (std_msgs/Header) defaults to an empty one. ``is_dense`` is set when every float x, y, z
    is finite.
    """
    from sensor_msgs.msg import PointField

    unknown = set(columns) - {name for name, _o, _d in layout}
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are not in the layout {[f[0] for f in layout]}")
    sizes = {np.asarray(v).size for v in columns.values()}
    if len(sizes) > 1:
        raise ValueError(f"columns have different lengths: { {k: np.asarray(v).size for k, v in columns.items()} }")
    n = sizes.pop() if sizes else 0
    if height < 1 or n % height:
        raise ValueError(f"{n} points cannot form {height} rows")
    width = n // height
    row_step = width * point_step if row_step is None else int(row_step)
    if row_step < width * point_step:
        raise ValueError(f"row_step {row_step} < width {width} * point_step {point_step}")

    msg = _new_cloud(header)
    msg.height, msg.width = height, width
    msg.point_step, msg.row_step = int(point_step), row_step
    msg.is_bigendian = bool(is_bigendian)
    msg.fields = [PointField(name=name, offset=int(off), datatype=int(dt), count=1) for name, off, dt in layout]
    lay = field_layout(msg)  # validates datatype codes, duplicates and point_step
    data = array.array("B", bytes([PAD_BYTE])) * (row_step * height)
    if n:
        buf = np.frombuffer(memoryview(data), dtype=np.uint8)
        view = np.ndarray((height, width), dtype=_point_dtype(lay, point_step, bool(is_bigendian)), buffer=buf,
                          strides=(row_step, point_step))
        for name, (_off, dt, _count) in lay.items():
            if name not in columns:
                view[name] = 0
                continue
            values = np.asarray(columns[name]).reshape(height, width)
            if _TYPECODES[dt][0] in "iu":
                info = np.iinfo(_TYPECODES[dt])
                if values.size and (values.min() < info.min or values.max() > info.max):
                    raise ValueError(f"column {name!r} has values outside {DATATYPE_NAMES[dt]} "
                                     f"[{info.min}, {info.max}]")
            view[name] = values
    msg.data = data
    finite = True
    for axis in _XYZ:
        if axis in columns and axis in lay and _TYPECODES[lay[axis][1]][0] == "f":
            finite = finite and bool(np.isfinite(np.asarray(columns[axis], dtype=np.float64)).all())
    msg.is_dense = finite
    return msg


def array_to_cloud(points: np.ndarray, fields: Sequence[str], header: Any = None) -> Any:
    """Pack an ``(N, K)`` array into a ``sensor_msgs/PointCloud2`` of K FLOAT32 fields.

    Little-endian, ``point_step = 4 * K``, ``height = 1``, ``width = N``, ``row_step = point_step * N``,
    ``is_dense`` true when every value is finite; ``header`` is copied as given (empty when None).
    """
    points = np.asarray(points)
    fields = list(fields)
    if points.ndim != 2 or points.shape[1] != len(fields):
        raise ValueError(f"points of shape {points.shape} do not match {len(fields)} fields {fields}")
    if len(set(fields)) != len(fields):
        raise ValueError(f"duplicate field names in {fields}")
    from sensor_msgs.msg import PointField

    k = len(fields)
    msg = _new_cloud(header)
    msg.height, msg.width = 1, points.shape[0]
    msg.point_step, msg.row_step = 4 * k, 4 * k * points.shape[0]
    msg.is_bigendian = False
    msg.fields = [PointField(name=name, offset=4 * i, datatype=FLOAT32, count=1) for i, name in enumerate(fields)]
    packed = np.ascontiguousarray(points, dtype="<f4")
    msg.data = array.array("B", packed.tobytes())
    msg.is_dense = bool(np.isfinite(packed).all())
    return msg
